// The batch-norm kernels of batchnorm.cu, unmodified, on the CPU execution model of cuda_on_cpu.h, with one
// extern "C" launcher per kernel for ctypes (adapters/cuda_kernel.py). Every launcher takes the grid
// (gx, gy) and the block size first, then exactly the kernel's parameters, and returns 0, or 1 when the
// launch configuration was refused (the message goes to stderr).
#include "cuda_on_cpu.h"
#include "batchnorm.cu"

namespace {
template <class... P, class... A>
int run(void (*kernel)(P...), unsigned gx, unsigned gy, unsigned block, A... args) {
    try {
        bnconf_cpu::launch(kernel, dim3(gx, gy), dim3(block), args...);
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bnconf batchnorm_cpu: %s\n", e.what());
        return 1;
    }
}
}  // namespace

extern "C" int launch_bnconf_eval_prep(unsigned gx, unsigned gy, unsigned block, const float* running_var,
                                       const float* gamma, float eps, unsigned C, float* invstd, float* scale) {
    return run(bnconf_eval_prep, gx, gy, block, running_var, gamma, eps, C, invstd, scale);
}

// The merges of synchronized batch norm across replicas (one thread per channel).
extern "C" int launch_bnconf_merge_stats(unsigned gx, unsigned gy, unsigned block, const int* part_n,
                                         const float* part_mean, const float* part_m2, unsigned W, unsigned C,
                                         float eps, float momentum, const float* gamma, int update_running,
                                         float* running_mean, float* running_var, float* save_mean, float* save_var,
                                         float* save_invstd, float* scale) {
    return run(bnconf_merge_stats, gx, gy, block, part_n, part_mean, part_m2, W, C, eps, momentum, gamma,
               update_running, running_mean, running_var, save_mean, save_var, save_invstd, scale);
}

extern "C" int launch_bnconf_bwd_merge(unsigned gx, unsigned gy, unsigned block, const float* part_dy,
                                       const float* part_dyxmu, const int* part_n, unsigned W, unsigned C,
                                       const float* invstd, const float* gamma, float* dgamma, float* dbeta,
                                       float* coef_a, float* coef_b, float* coef_k) {
    return run(bnconf_bwd_merge, gx, gy, block, part_dy, part_dyxmu, part_n, W, C, invstd, gamma, dgamma, dbeta,
               coef_a, coef_b, coef_k);
}

#define BNCONF_CPU_LAUNCHERS(T, TN, LN, VN)                                                                      \
    extern "C" int launch_bnconf_stats_##LN##_##VN##_##TN(                                                       \
        unsigned gx, unsigned gy, unsigned block, const T* x, unsigned N, unsigned C, unsigned S, unsigned lanes, \
        float eps, float momentum, const float* gamma, int update_running, float* running_mean,                  \
        float* running_var, int* ws_n, float* ws_mean, float* ws_m2, unsigned* counters, float* save_mean,        \
        float* save_invstd, float* scale) {                                                                      \
        return run(bnconf_stats_##LN##_##VN##_##TN, gx, gy, block, x, N, C, S, lanes, eps, momentum, gamma,      \
                   update_running, running_mean, running_var, ws_n, ws_mean, ws_m2, counters, save_mean,         \
                   save_invstd, scale);                                                                          \
    }                                                                                                            \
    extern "C" int launch_bnconf_apply_##LN##_##VN##_##TN(unsigned gx, unsigned gy, unsigned block, const T* x,  \
                                                          T* y, unsigned N, unsigned C, unsigned S,              \
                                                          unsigned lanes, const float* mean, const float* scale,  \
                                                          const float* beta) {                                   \
        return run(bnconf_apply_##LN##_##VN##_##TN, gx, gy, block, x, y, N, C, S, lanes, mean, scale, beta);     \
    }                                                                                                            \
    extern "C" int launch_bnconf_bwd_reduce_##LN##_##VN##_##TN(                                                  \
        unsigned gx, unsigned gy, unsigned block, const T* x, const T* dy, unsigned N, unsigned C, unsigned S,    \
        unsigned lanes, const float* mean, const float* invstd, const float* gamma, int train, float* ws_dy,      \
        float* ws_dyxmu, unsigned* counters, float* dgamma, float* dbeta, float* coef_a, float* coef_b,           \
        float* coef_k) {                                                                                         \
        return run(bnconf_bwd_reduce_##LN##_##VN##_##TN, gx, gy, block, x, dy, N, C, S, lanes, mean, invstd,     \
                   gamma, train, ws_dy, ws_dyxmu, counters, dgamma, dbeta, coef_a, coef_b, coef_k);              \
    }                                                                                                            \
    extern "C" int launch_bnconf_dx_##LN##_##VN##_##TN(                                                          \
        unsigned gx, unsigned gy, unsigned block, const T* x, const T* dy, T* dx, unsigned N, unsigned C,         \
        unsigned S, unsigned lanes, int train, const float* mean, const float* coef_a, const float* coef_b,       \
        const float* coef_k) {                                                                                   \
        return run(bnconf_dx_##LN##_##VN##_##TN, gx, gy, block, x, dy, dx, N, C, S, lanes, train, mean, coef_a,  \
                   coef_b, coef_k);                                                                              \
    }                                                                                                            \
    extern "C" int launch_bnconf_partial_stats_##LN##_##VN##_##TN(                                               \
        unsigned gx, unsigned gy, unsigned block, const T* x, unsigned N, unsigned C, unsigned S, unsigned lanes, \
        int* ws_n, float* ws_mean, float* ws_m2, unsigned* counters, int* part_n, float* part_mean,               \
        float* part_m2) {                                                                                        \
        return run(bnconf_partial_stats_##LN##_##VN##_##TN, gx, gy, block, x, N, C, S, lanes, ws_n, ws_mean,     \
                   ws_m2, counters, part_n, part_mean, part_m2);                                                 \
    }                                                                                                            \
    extern "C" int launch_bnconf_bwd_partial_##LN##_##VN##_##TN(                                                 \
        unsigned gx, unsigned gy, unsigned block, const T* x, const T* dy, unsigned N, unsigned C, unsigned S,    \
        unsigned lanes, const float* mean, float* ws_dy, float* ws_dyxmu, unsigned* counters, float* part_dy,     \
        float* part_dyxmu) {                                                                                     \
        return run(bnconf_bwd_partial_##LN##_##VN##_##TN, gx, gy, block, x, dy, N, C, S, lanes, mean, ws_dy,     \
                   ws_dyxmu, counters, part_dy, part_dyxmu);                                                     \
    }

#define BNCONF_CPU_DTYPE(T, TN)                 \
    BNCONF_CPU_LAUNCHERS(T, TN, nchw, v)        \
    BNCONF_CPU_LAUNCHERS(T, TN, nchw, s)        \
    BNCONF_CPU_LAUNCHERS(T, TN, nhwc, v)        \
    BNCONF_CPU_LAUNCHERS(T, TN, nhwc, s)

BNCONF_CPU_DTYPE(float, f32)
BNCONF_CPU_DTYPE(__half, f16)
BNCONF_CPU_DTYPE(__nv_bfloat16, bf16)
