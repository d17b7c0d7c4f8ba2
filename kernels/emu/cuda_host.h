// What el_kernel.cu uses of CUDA, for a host C++ compiler, so that the
// kernel's own source runs on the CPU in the tests (el_emulated.rs).
//
// Execution model: blocks run one after another; each CUDA thread of a block
// is one OS thread (kept for the whole grid), __syncthreads is a barrier of
// the block's threads and a warp shuffle is an exchange through a per-warp
// buffer behind a barrier of the warp's 32 threads. Blocks must be a whole
// number of warps, as the kernel's reductions assume.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
// One copy per kernel function, seen by every thread: blocks run one at a time.
#define __shared__ static

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

template <typename To, typename From>
inline To el_emu_bits(From from) {
    static_assert(sizeof(To) == sizeof(From));
    To to;
    std::memcpy(&to, &from, sizeof to);
    return to;
}
inline float __int_as_float(int i) { return el_emu_bits<float>(i); }
inline float __uint_as_float(unsigned int u) { return el_emu_bits<float>(u); }
inline unsigned int __float_as_uint(float f) { return el_emu_bits<unsigned int>(f); }

// cuda_fp16.h's conversions, with the rounding of PTX cvt.rn.f16.f32
// (round to nearest even, overflow to infinity, NaN to the canonical NaN).
struct __half {
    unsigned short bits;
};
inline __half __ushort_as_half(unsigned short h) { return __half{h}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }

inline float __half2float(__half h) {
    unsigned int sign = (unsigned int)(h.bits & 0x8000u) << 16;
    unsigned int exp = (h.bits >> 10) & 0x1fu;
    unsigned int mant = h.bits & 0x3ffu;
    if (exp == 0x1f) return __uint_as_float(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        // Zero or subnormal: mant · 2^−24, exact in float.
        float m = std::ldexp((float)mant, -24);
        return sign ? -m : m;
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

inline __half __float2half_rn(float f) {
    unsigned int u = __float_as_uint(f);
    unsigned short sign = (unsigned short)((u >> 16) & 0x8000u);
    unsigned int abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return __half{0x7fffu};  // PTX's canonical NaN
    if (abs >= 0x477ff000u) return __half{(unsigned short)(sign | 0x7c00u)};  // rounds past 65504
    int exp = (int)(abs >> 23) - 127;
    unsigned int mant = (abs & 0x7fffffu) | 0x800000u;
    // Bits of the float mantissa below the half's last kept bit.
    int shift = exp >= -14 ? 13 : 13 + (-14 - exp);
    if (shift > 24) return __half{sign};  // below half the smallest subnormal
    unsigned int kept = mant >> shift;
    unsigned int rest = mant & ((1u << shift) - 1u);
    unsigned int halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (kept & 1u))) kept += 1;
    // Normal: add the biased exponent (a mantissa carry moves into it); subnormal: kept is the field.
    unsigned int bits = exp >= -14 ? (((unsigned int)(exp + 14) << 10) + kept) : kept;
    return __half{(unsigned short)(sign | bits)};
}

namespace el_emu {

struct Warp {
    std::barrier<> sync{32};
    // Two buffers, alternated, so that one barrier per shuffle suffices: a
    // thread writes a buffer again only after every lane passed the next barrier.
    std::uint64_t slots[2][32];
    int phase[32] = {};
};

struct Block {
    explicit Block(unsigned threads) : sync(threads), warps(threads / 32) {}
    std::barrier<> sync;
    std::deque<Warp> warps;
};

inline Block* current = nullptr;

}  // namespace el_emu

inline void __syncthreads() { el_emu::current->sync.arrive_and_wait(); }

template <typename T>
inline T __shfl_xor_sync(unsigned int, T var, int lane_mask, int = 32) {
    static_assert(sizeof(T) <= 8);
    unsigned lane = threadIdx.x & 31;
    el_emu::Warp& w = el_emu::current->warps[threadIdx.x >> 5];
    int& phase = w.phase[lane];
    std::uint64_t raw = 0;
    std::memcpy(&raw, &var, sizeof var);
    w.slots[phase][lane] = raw;
    w.sync.arrive_and_wait();
    raw = w.slots[phase][lane ^ (unsigned)lane_mask];
    phase ^= 1;
    T out;
    std::memcpy(&out, &raw, sizeof out);
    return out;
}

namespace el_emu {

// Runs `kernel` over the grid; returns 0, or 1 when the block is not a whole
// number of warps (the kernel's reductions need full warps).
template <typename Kernel>
int launch(unsigned grid, unsigned block, Kernel kernel) {
    if (block == 0 || block % 32 != 0 || block > 1024) return 1;
    gridDim = dim3{grid, 1, 1};
    blockDim = dim3{block, 1, 1};
    Block state(block);
    current = &state;
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; ++t) {
        threads.emplace_back([&, t] {
            threadIdx = uint3{t, 0, 0};
            for (unsigned b = 0; b < grid; ++b) {
                blockIdx = uint3{b, 0, 0};
                kernel();
                // __shared__ memory is reused by the next block.
                state.sync.arrive_and_wait();
            }
        });
    }
    for (auto& t : threads) t.join();
    current = nullptr;
    return 0;
}

}  // namespace el_emu
