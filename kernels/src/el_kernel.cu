// The fused encouraging loss on CUDA, compiled at run time by NVRTC (el_cuda.rs).
// No headers: half and bfloat16 are converted by hand so that NVRTC needs nothing
// beyond itself. Math follows el_plan.rs / el_fused_cpu.rs id for id. The same
// source also builds as host C++ (kernels/emu) for the CPU tests.
//
// el_stats_*: one block per candidate row; one read of the row (online max/sum).
// el_rows_*:  one block per row of the batch; rows without a job get zeros, kept
//             rows get a sweep that sums the bonus and the gradient's row constant,
//             then a sweep (mostly from L2) that writes d(loss)/d(logits).

#define BLOCK 1024
#define NEG_INF __int_as_float(0xff800000)

struct f16_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

#ifdef __CUDACC_RTC__
__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ unsigned short f32_to_f16(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
#else
// A host compiler (the CPU emulation, kernels/emu) cannot take PTX: cuda_fp16.h's
// conversions of the same rounding stand in.
__device__ __forceinline__ float f16_to_f32(unsigned short h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ unsigned short f32_to_f16(float v) { return __half_as_ushort(__float2half_rn(v)); }
#endif

__device__ __forceinline__ float load_f32(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float load_f32(const f16_t* p, long long i) { return f16_to_f32(p[i].bits); }
__device__ __forceinline__ float load_f32(const bf16_t* p, long long i) {
    return __uint_as_float(((unsigned int)p[i].bits) << 16);
}
__device__ __forceinline__ void store_f32(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void store_f32(f16_t* p, long long i, float v) { p[i].bits = f32_to_f16(v); }
__device__ __forceinline__ void store_f32(bf16_t* p, long long i, float v) {
    unsigned int u = __float_as_uint(v);
    // Round to nearest even; keep NaN a NaN.
    unsigned short h = ((u & 0x7fffffffu) > 0x7f800000u)
        ? (unsigned short)0x7fc0
        : (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    p[i].bits = h;
}

__device__ __forceinline__ bool is_allowed(const unsigned char* mask_row, int range_start, int range_end, long long v) {
    if (mask_row) return mask_row[v] != 0;
    if (range_start >= 0) return v < 4 || (v >= range_start && v < range_end);
    return true;
}

// Block-wide reductions; every thread gets the result. `sh` holds 32 slots.
__device__ double block_sum(double x, double* sh) {
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = x;
    __syncthreads();
    if (warp == 0) {
        x = (lane < (int)(blockDim.x >> 5)) ? sh[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
        if (lane == 0) sh[0] = x;
    }
    __syncthreads();
    return sh[0];
}

__device__ float block_max(float x, float* sh) {
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = x;
    __syncthreads();
    if (warp == 0) {
        x = (lane < (int)(blockDim.x >> 5)) ? sh[lane] : NEG_INF;
        for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
        if (lane == 0) sh[0] = x;
    }
    __syncthreads();
    return sh[0];
}

__device__ long long block_min(long long x, long long* sh) {
    for (int o = 16; o > 0; o >>= 1) {
        long long y = __shfl_xor_sync(0xffffffffu, x, o);
        x = y < x ? y : x;
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = x;
    __syncthreads();
    if (warp == 0) {
        x = (lane < (int)(blockDim.x >> 5)) ? sh[lane] : 0x7fffffffffffffffLL;
        for (int o = 16; o > 0; o >>= 1) {
            long long y = __shfl_xor_sync(0xffffffffu, x, o);
            x = y < x ? y : x;
        }
        if (lane == 0) sh[0] = x;
    }
    __syncthreads();
    return sh[0];
}

// out[6·k ..]: max, Σ e^(z−max), Σ z, allowed count, target logit, first argmax.
template <typename T>
__device__ void stats_impl(const T* logits, long long V, const long long* rows, const long long* targets,
                           const unsigned char* masks, int range_start, int range_end, double* out) {
    __shared__ double sh_d[32];
    __shared__ float sh_f[32];
    __shared__ long long sh_i[32];
    long long k = blockIdx.x;
    long long row = rows[k];
    const T* z = logits + row * V;
    const unsigned char* mask_row = masks ? masks + row * V : 0;
    float mx = NEG_INF, s = 0.f, sum_z = 0.f;
    long long arg = 0x7fffffffffffffffLL;
    int count = 0;
    for (long long v = threadIdx.x; v < V; v += blockDim.x) {
        if (!is_allowed(mask_row, range_start, range_end, v)) continue;
        float x = load_f32(z, v);
        if (x > mx) {
            s = s * expf(mx - x) + 1.f;
            mx = x;
            arg = v;
        } else {
            s += expf(x - mx);
        }
        sum_z += x;
        count += 1;
    }
    float m = block_max(mx, sh_f);
    double total = block_sum(mx == NEG_INF ? 0.0 : (double)s * exp((double)(mx - m)), sh_d);
    double total_z = block_sum((double)sum_z, sh_d);
    double total_count = block_sum((double)count, sh_d);
    long long first = block_min(mx == m ? arg : 0x7fffffffffffffffLL, sh_i);
    if (threadIdx.x == 0) {
        double* o = out + 6 * k;
        o[0] = m;
        o[1] = total;
        o[2] = total_z;
        o[3] = total_count;
        o[4] = load_f32(z, targets[k]);
        o[5] = (double)first;
    }
}

struct Consts {
    float eps, eps_over_v, log_end, slope, at_end, half_alpha;
    int full;
};

__device__ __forceinline__ void bonus_eval(const Consts& c, float p, float* b, float* d) {
    float om = 1.f - p;
    float log_part = logf(fmaxf(om, 1e-5f));
    float log_slope = om >= 1e-5f ? -p / om : 0.f;
    if (!c.full && p > c.log_end) {
        *b = (p - c.log_end) * c.slope + c.at_end;
        *d = p * c.slope;
    } else {
        *b = log_part;
        *d = log_slope;
    }
}

struct Side { float max, ln_sum, conf; };

// jobs_f[8·k ..]: max, ln_sum, conf, eps_row, allowed, partner max, partner ln_sum, partner conf.
// jobs_i[3·k ..]: row, target, partner row (−1: none).
template <typename T>
__device__ void rows_impl(const T* logits, T* grad, long long V, const int* job_of_row, const float* jobs_f,
                          const long long* jobs_i, const unsigned char* masks, int range_start, int range_end,
                          Consts c, double* sums) {
    __shared__ double sh_d[32];
    long long row = blockIdx.x;
    T* g = grad + row * V;
    int k = job_of_row[row];
    if (k < 0) {
        for (long long v = threadIdx.x; v < V; v += blockDim.x) store_f32(g, v, 0.f);
        return;
    }
    const float* jf = jobs_f + 8 * (long long)k;
    Side own = {jf[0], jf[1], jf[2]};
    float eps_row = jf[3], allowed_count = jf[4];
    Side other = {jf[5], jf[6], jf[7]};
    long long target = jobs_i[3 * (long long)k + 1];
    long long partner_row = jobs_i[3 * (long long)k + 2];
    const T* z = logits + row * V;
    const T* pz = partner_row >= 0 ? logits + partner_row * V : 0;
    const unsigned char* mask_row = masks ? masks + row * V : 0;
    const unsigned char* pmask_row = (masks && pz) ? masks + partner_row * V : 0;

    // Per id: q (softmax), b(p), b'(p)·p, KL value, KL slope.
#define PER_ID(v, OK, Q, B, D, KL, KS)                                                        \
    bool OK = is_allowed(mask_row, range_start, range_end, v);                                \
    float Q = 0.f, B = 0.f, D = 0.f, KL = 0.f, KS = 0.f;                                      \
    if (OK) {                                                                                 \
        float x = (load_f32(z, v) - own.max) - own.ln_sum;                                    \
        float l = own.conf * x;                                                               \
        float p = expf(l);                                                                    \
        Q = own.conf == 1.f ? p : expf(x);                                                    \
        bonus_eval(c, p, &B, &D);                                                             \
        if (pz && is_allowed(pmask_row, range_start, range_end, v)) {                         \
            float lp = other.conf * ((load_f32(pz, v) - other.max) - other.ln_sum);            \
            float pp = expf(lp);                                                              \
            KL = (p - pp) * (l - lp);                                                         \
            KS = p * (l - lp) + p - pp;                                                       \
        }                                                                                     \
    }

    float acc_b = 0.f, acc_d = 0.f, acc_kl = 0.f, acc_ks = 0.f;
    for (long long v = threadIdx.x; v < V; v += blockDim.x) {
        PER_ID(v, ok, q, b, d, kl, ks)
        acc_b += b;
        acc_d += d;
        acc_kl += kl;
        acc_ks += ks;
    }
    double bonus_all = block_sum(acc_b, sh_d);
    double b1 = block_sum(acc_d, sh_d);
    double kl_all = block_sum(acc_kl, sh_d);
    double k1 = block_sum(acc_ks, sh_d);

    float tb, t_slope;
    bonus_eval(c, expf(own.conf * ((load_f32(z, target) - own.max) - own.ln_sum)), &tb, &t_slope);
    // The ε' terms are grouped apart (see PassConsts::slope_sum_rest in el_plan.rs).
    double eps = c.eps;
    float s_rest = (float)((double)c.eps_over_v * b1 + (double)c.half_alpha * k1 - (1.0 - eps) + (1.0 - eps) * t_slope);
    float target_extra = own.conf * (1.f - c.eps) * (t_slope - 1.f);

    for (long long v = threadIdx.x; v < V; v += blockDim.x) {
        PER_ID(v, ok, q, b, d, kl, ks)
        float eps_part = eps_row * (q * (allowed_count - 1.f) - (ok ? 1.f : 0.f) + (v == target ? 1.f : 0.f));
        float out = own.conf * (eps_part + c.eps_over_v * d + c.half_alpha * ks - q * s_rest);
        if (v == target) out += target_extra;
        store_f32(g, v, out);
    }
#undef PER_ID
    if (threadIdx.x == 0) {
        sums[2 * (long long)k] = bonus_all;
        sums[2 * (long long)k + 1] = kl_all;
    }
}

#define INSTANTIATE(SUFFIX, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(BLOCK) el_stats_##SUFFIX(                              \
        const T* logits, long long V, const long long* rows, const long long* targets,                  \
        const unsigned char* masks, int range_start, int range_end, double* out) {                      \
        stats_impl<T>(logits, V, rows, targets, masks, range_start, range_end, out);                    \
    }                                                                                                   \
    extern "C" __global__ void __launch_bounds__(BLOCK) el_rows_##SUFFIX(                               \
        const T* logits, T* grad, long long V, const int* job_of_row, const float* jobs_f,              \
        const long long* jobs_i, const unsigned char* masks, int range_start, int range_end,            \
        float eps, float eps_over_v, float log_end, int full, float slope, float at_end,                 \
        float half_alpha, double* sums) {                                                               \
        Consts c = {eps, eps_over_v, log_end, slope, at_end, half_alpha, full};                         \
        rows_impl<T>(logits, grad, V, job_of_row, jobs_f, jobs_i, masks, range_start, range_end, c, sums); \
    }

INSTANTIATE(f32, float)
INSTANTIATE(f16, f16_t)
INSTANTIATE(bf16, bf16_t)
