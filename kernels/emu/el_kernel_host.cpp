// el_kernel.cu built for the CPU. Entry point in the manner of cuLaunchKernel:
// a kernel by name and one pointer per argument (el_emulated.rs).
#include "cuda_host.h"

#include "../src/el_kernel.cu"

#include <cstring>
#include <utility>

namespace {

template <typename... Args, std::size_t... I>
int launch_with(void (*kernel)(Args...), unsigned grid, unsigned block, void** params, std::index_sequence<I...>) {
    return el_emu::launch(grid, block, [=] { kernel(*static_cast<Args*>(params[I])...); });
}

template <typename... Args>
int launch(void (*kernel)(Args...), unsigned grid, unsigned block, void** params) {
    return launch_with(kernel, grid, block, params, std::index_sequence_for<Args...>{});
}

}  // namespace

// 0: done; 1: the block is not a whole number of warps; 2: no kernel of that name.
extern "C" int el_emu_launch(const char* name, unsigned grid, unsigned block, void** params) {
    struct Entry {
        const char* name;
        int (*run)(unsigned, unsigned, void**);
    };
#define ENTRY(K) {#K, [](unsigned g, unsigned b, void** p) { return launch(K, g, b, p); }}
    static const Entry entries[] = {ENTRY(el_stats_f32), ENTRY(el_stats_f16), ENTRY(el_stats_bf16),
                                    ENTRY(el_rows_f32),  ENTRY(el_rows_f16),  ENTRY(el_rows_bf16)};
#undef ENTRY
    for (const Entry& e : entries)
        if (std::strcmp(e.name, name) == 0) return e.run(grid, block, params);
    return 2;
}

// The f16 conversions the kernel uses on the host, for checking them against the `half` crate.
extern "C" float el_emu_f16_to_f32(unsigned short h) { return f16_to_f32(h); }
extern "C" unsigned short el_emu_f32_to_f16(float v) { return f32_to_f16(v); }
