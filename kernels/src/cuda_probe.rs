//! Whether the CUDA driver and NCCL can be loaded, asked without touching
//! cudarc: cudarc's dynamic loading panics when a library is missing.

use std::ffi::CString;

fn can_dlopen(names: &[&str]) -> bool {
    names.iter().any(|name| {
        let Ok(c_name) = CString::new(*name) else { return false };
        // SAFETY: dlopen with a valid C string; the handle is closed at once.
        unsafe {
            let handle = libc::dlopen(c_name.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if handle.is_null() {
                false
            } else {
                libc::dlclose(handle);
                true
            }
        }
    })
}

/// The CUDA driver library (libcuda) can be loaded.
pub fn driver_available() -> bool {
    can_dlopen(&["libcuda.so.1", "libcuda.so"])
}

/// The NCCL library can be loaded.
pub fn nccl_available() -> bool {
    can_dlopen(&["libnccl.so.2", "libnccl.so"])
}

/// A CUDA device is usable: the driver loads and libtorch sees a device.
pub fn cuda_usable() -> bool {
    driver_available() && tch::Cuda::is_available()
}
