// bnconf's own batch-norm kernels: CUDA C++ device code only (no host code), compiled by NVRTC (CuPy
// RawModule) on a GPU and, unmodified, by g++ with cuda_on_cpu.h on the CPU (adapters/cuda_kernel.py).
//
// Semantics: PyTorch's torch.nn.functional.batch_norm (the TORCH_FUNCTIONAL record). The input is viewed as
// (N, C, S) ("nchw": channel axis 1) or (N, S, C) ("nhwc": channel axis last), any rank reshaped to that;
// n = N * S values per channel. Inputs float, __half or __nv_bfloat16; every statistic, parameter and
// accumulator float32 (no float64 anywhere):
//   training forward  mean, var = batch mean and biased variance (Welford per thread, Chan merges)
//                     invstd = 1 / sqrtf(var + eps)
//                     running_mean = (1 - m) running_mean + m mean
//                     running_var  = (1 - m) running_var  + m M2 / (n - 1)     (m: weight of the new batch)
//                     y = (x - mean) (invstd gamma) + beta
//   eval forward      the same y with running_mean and invstd = 1 / sqrtf(running_var + eps)
//   backward          sum_dy = sum(dy), sum_dyxmu = sum(dy (x - mean)), dbeta = sum_dy,
//                     dgamma = sum_dyxmu invstd,
//                     training: dx = gamma invstd (dy - sum_dy / n) - gamma invstd^3 sum_dyxmu / n (x - mean)
//                     eval:     dx = gamma invstd dy                (mean, invstd: the running ones)
//
// Kernels (extern "C", one per kernel x layout x load width x dtype; names bnconf_<kernel>_<layout>_<v|s>_<dt>):
//   stats       reduction over x: per-block (count, mean, M2) partials to a workspace; the last block of each
//               channel group to finish (atomic counter + __threadfence) merges them, writes saved mean,
//               invstd and scale = invstd gamma, updates the running statistics and resets its counter
//               (with one block per group, gridDim.x = 1, that block finishes directly: no workspace).
//   apply       y = (x - mean) scale + beta                          (second and last pass over x)
//   bwd_reduce  reduction over (x, dy) as stats, then dgamma, dbeta and the dx coefficients
//   dx          dx = coef_a (dy - coef_b) - coef_k (x - mean)        (eval: coef_b = coef_k = 0, x unread)
//   bnconf_eval_prep: invstd and scale from the running variance for the eval modes.
// Synchronized across replicas (each replica's shard on its own device; adapters/cuda_replicas.py):
//   partial_stats  the stats reduction, writing the shard's per-channel (count, mean, M2) only
//   bwd_partial    the bwd_reduce reduction with the global mean, writing the shard's sum(dy), sum(dy (x - mean))
//   bnconf_merge_stats, bnconf_bwd_merge: the merges of the W replicas' partials (see there); the shards are
//   then normalized by apply and differentiated by dx with the merged statistics and coefficients.
// Launch geometry (host side, adapters/cuda_kernel.py::launch_geometry): block = up to 256 threads (a
// multiple of 32); grid = (splits, channel groups). nchw: one channel per group, the block's threads walk
// that channel's n values. nhwc: `lanes` (a power of two <= 32) threads per row side by side on consecutive
// channel packs, blockDim / lanes rows at once; a group is `lanes` channel packs. "v" kernels move 16 bytes
// per load/store (needs S (nchw) or C (nhwc) a multiple of 16 / sizeof(T) and 16-byte aligned pointers),
// "s" kernels one element. Workspaces hold C * gridDim.x partials; counters (one per group) start at zero
// and are left at zero. The second pass walks the data in the reverse order of the first, so that the
// most recently read part of x may still be in L2. Every element count below 2^31.

#include <cuda_fp16.h>
#include <cuda_bf16.h>

namespace bnk {

constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr int MAX_THREADS = 256;  // shared-memory staging is sized for this many threads per block
constexpr int NCHW = 0;
constexpr int NHWC = 1;

// ------------------------------------------------------------------------------------------- conversions
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Two floats exchanged by one 64-bit shuffle (two 32-bit shuffles on a GPU; one exchange on the CPU).
__device__ __forceinline__ void shfl_xor_pair(float& a, float& b, int offset) {
    const unsigned long long packed =
        (static_cast<unsigned long long>(__float_as_uint(b)) << 32) | static_cast<unsigned long long>(__float_as_uint(a));
    const unsigned long long got = __shfl_xor_sync(FULL_MASK, packed, offset);
    a = __uint_as_float(static_cast<unsigned>(got & 0xffffffffull));
    b = __uint_as_float(static_cast<unsigned>(got >> 32));
}

// V consecutive elements moved as one aligned load/store (16 bytes when V = 16 / sizeof(T)).
template <typename T, int V> struct alignas(sizeof(T) * V) Pack { T v[V]; };

template <typename T, int V>
__device__ __forceinline__ void load_floats(const T* __restrict__ p, float (&f)[V]) {
    const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
    for (int k = 0; k < V; ++k) f[k] = to_float(pk.v[k]);
}

// A streaming store (evict-first: y and dx are not read again by these kernels).
template <typename T, int V>
__device__ __forceinline__ void store_floats(T* __restrict__ p, const float (&f)[V]) {
    Pack<T, V> pk;
#pragma unroll
    for (int k = 0; k < V; ++k) pk.v[k] = from_float<T>(f[k]);
    if constexpr (sizeof(T) * V == 16) {
        __stcs(reinterpret_cast<float4*>(p), *reinterpret_cast<const float4*>(&pk));
    } else {
        *reinterpret_cast<Pack<T, V>*>(p) = pk;
    }
}

// --------------------------------------------------------------------------------------- reduction states
// Count, mean and M2 (sum of squared deviations) of W channels that saw the same number of values.
template <int W> struct Moments {
    int n;
    float mean[W];
    float m2[W];

    __device__ __forceinline__ void reset() {
        n = 0;
#pragma unroll
        for (int k = 0; k < W; ++k) mean[k] = m2[k] = 0.0f;
    }
    // Welford: one new value per channel.
    __device__ __forceinline__ void add_row(const float (&v)[W]) {
        n += 1;
        const float inv = 1.0f / static_cast<float>(n);
#pragma unroll
        for (int k = 0; k < W; ++k) {
            const float d = v[k] - mean[k];
            mean[k] = fmaf(d, inv, mean[k]);
            m2[k] = fmaf(d, v[k] - mean[k], m2[k]);
        }
    }
    // Chan: merge another (nb, meanb, m2b) into this one. The cross term is (d * fab) * d, not (d * d) * fab: into
    // an empty accumulator fab = 0 and d is the other mean, whose square may exceed float32 (Inf * 0 = NaN).
    __device__ __forceinline__ void merge(int nb, const float (&meanb)[W], const float (&m2b)[W]) {
        if (nb == 0) return;
        const int nn = n + nb;
        const float fb = static_cast<float>(nb) / static_cast<float>(nn);
        const float fab = static_cast<float>(n) * fb;  // n nb / (n + nb)
#pragma unroll
        for (int k = 0; k < W; ++k) {
            const float d = meanb[k] - mean[k];
            mean[k] = fmaf(d, fb, mean[k]);
            m2[k] = fmaf(d * fab, d, m2[k] + m2b[k]);
        }
        n = nn;
    }
    __device__ __forceinline__ void merge(const Moments& o) { merge(o.n, o.mean, o.m2); }
    // V values of channel 0 (W = 1): their exact-order local mean and M2, then one Chan merge.
    template <int V> __device__ __forceinline__ void add_values(const float (&v)[V]) {
        static_assert(W == 1, "add_values feeds one channel");
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < V; ++k) s += v[k];
        const float local_mean[1] = {s * (1.0f / static_cast<float>(V))};
        float q = 0.0f;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const float d = v[k] - local_mean[0];
            q = fmaf(d, d, q);
        }
        const float local_m2[1] = {q};
        merge(V, local_mean, local_m2);
    }
    __device__ __forceinline__ Moments shfl_xor(int offset) const {
        Moments o = *this;
        o.n = __shfl_xor_sync(FULL_MASK, n, offset);
#pragma unroll
        for (int k = 0; k < W; ++k) shfl_xor_pair(o.mean[k], o.m2[k], offset);
        return o;
    }
};

// Plain float32 sums of dy and dy (x - mean) for W channels.
template <int W> struct Sums {
    float dy[W];
    float dyxmu[W];

    __device__ __forceinline__ void reset() {
#pragma unroll
        for (int k = 0; k < W; ++k) dy[k] = dyxmu[k] = 0.0f;
    }
    __device__ __forceinline__ void merge(const Sums& o) {
#pragma unroll
        for (int k = 0; k < W; ++k) {
            dy[k] += o.dy[k];
            dyxmu[k] += o.dyxmu[k];
        }
    }
    __device__ __forceinline__ Sums shfl_xor(int offset) const {
        Sums o = *this;
#pragma unroll
        for (int k = 0; k < W; ++k) shfl_xor_pair(o.dy[k], o.dyxmu[k], offset);
        return o;
    }
};

// Merges the states of all threads with the same lane (threadIdx.x % lanes, lanes a power of two <= 32):
// butterfly shuffles within each warp, then one partial per warp and lane through shared memory. The result
// is valid in threads threadIdx.x < lanes. Every thread of the block must call it.
template <class State>
__device__ __forceinline__ void block_reduce(State& s, unsigned lanes) {
    __shared__ State staged[MAX_THREADS];
    for (unsigned offset = 16; offset >= lanes; offset >>= 1) {
        const State o = s.shfl_xor(static_cast<int>(offset));
        s.merge(o);
    }
    const unsigned tid = threadIdx.x, lane = tid & 31u, warp = tid >> 5, warps = blockDim.x >> 5;
    __syncthreads();  // staged may still be read by an earlier call
    if (lane < lanes) staged[warp * lanes + lane] = s;
    __syncthreads();
    if (tid < lanes) {
        s = staged[tid];
        for (unsigned w = 1; w < warps; ++w) s.merge(staged[w * lanes + tid]);
    }
}

// After every block has written its partials: true in the last block of group `g` to get here. The counter
// is reset by that block (see finish_group).
__device__ __forceinline__ bool last_block_of_group(unsigned* counters, unsigned g) {
    __shared__ int is_last[1];
    __threadfence();  // this thread's partials are visible device-wide before the block is counted
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned done = atomicAdd(counters + g, 1u);
        is_last[0] = done == gridDim.x - 1u;
    }
    __syncthreads();
    const bool last = is_last[0] != 0;
    if (last) __threadfence();  // then read the other blocks' partials
    return last;
}

// ------------------------------------------------------------------------------------------ walking x
// Which values a thread visits. A "pack" is V consecutive elements. Channel group g (blockIdx.y, or its
// mirror for the reverse walk); within it, item j in [0, count) from `start` in steps of `stride`.
template <int L, int V> struct Walk;

// nchw: the group is one channel c; items are the channel's N * S / V packs, S / V per row.
template <int V> struct Walk<NCHW, V> {
    static constexpr int W = 1;  // channels per thread
    unsigned start, stride, count, C, S, SV, c, group, lanes, lane;
    bool active;
    __device__ __forceinline__ Walk(unsigned N, unsigned C_, unsigned S_, unsigned /*lanes*/, bool reverse)
        : start(blockIdx.x * blockDim.x + threadIdx.x), stride(gridDim.x * blockDim.x), count(N * (S_ / V)),
          C(C_), S(S_), SV(S_ / V), c(reverse ? gridDim.y - 1u - blockIdx.y : blockIdx.y), group(c),
          lanes(1), lane(0), active(true) {}
    __device__ __forceinline__ unsigned offset(unsigned j) const {
        const unsigned n = j / SV;
        return (n * C + c) * S + (j - n * SV) * V;
    }
    __device__ __forceinline__ unsigned channel(unsigned k) const { return c + k; }
};

// nhwc: the group is `lanes` channel packs; thread (lane, row) = (tid % lanes, tid / lanes) walks rows of
// its pack; items are the N * S rows.
template <int V> struct Walk<NHWC, V> {
    static constexpr int W = V;
    unsigned start, stride, count, C, cp, group, lanes, lane;
    bool active;
    __device__ __forceinline__ Walk(unsigned N, unsigned C_, unsigned S, unsigned lanes_, bool reverse)
        : start(blockIdx.x * (blockDim.x / lanes_) + threadIdx.x / lanes_), stride(gridDim.x * (blockDim.x / lanes_)),
          count(N * S), C(C_), cp(0), group(reverse ? gridDim.y - 1u - blockIdx.y : blockIdx.y), lanes(lanes_),
          lane(threadIdx.x % lanes_), active(false) {
        cp = group * lanes + lane;
        active = cp < C / V;
    }
    __device__ __forceinline__ unsigned offset(unsigned j) const { return j * C + cp * V; }
    __device__ __forceinline__ unsigned channel(unsigned k) const { return cp * V + k; }
};

// Item number `i` of this thread's walk, forwards or backwards.
template <bool REVERSE> __device__ __forceinline__ unsigned item(unsigned j, unsigned count) {
    return REVERSE ? count - 1u - j : j;
}

// Loads per thread in flight before they are consumed (memory-level parallelism): 64 bytes, except where a thread
// keeps 8 channels of state (nhwc with 16-bit packs), where fewer keep it within 64 registers.
template <typename T, int L, int V> struct Unroll {
    static constexpr bool wide_state = L == NHWC && V >= 8;
    static constexpr int one = wide_state ? 2 : ((sizeof(T) * V >= 16) ? 4 : (V == 1 ? 8 : 4));  // one tensor read
    static constexpr int two = wide_state ? 1 : one / 2;                                        // two tensors read
};

// ------------------------------------------------------------------------------------------ the kernels
// The (count, mean, M2) of the channels of this block's group over x: Welford per thread (exact local merges of
// each nchw pack), butterfly and shared-memory Chan merges, and with several blocks per group (gridDim.x > 1)
// the per-block partials in the workspace, merged by the last block of the group, which resets its counter.
// Returns false in the blocks that are done (not last); in the block that holds the group's result, true, the
// result valid in threads tid < w.lanes with w.active. Shared by `stats` and `partial_stats`.
template <typename T, int L, int V>
__device__ __forceinline__ bool reduce_moments(const T* __restrict__ x, const Walk<L, V>& w, int* ws_n,
                                               float* ws_mean, float* ws_m2, unsigned* counters,
                                               Moments<Walk<L, V>::W>& acc) {
    constexpr int W = Walk<L, V>::W;
    constexpr int U = Unroll<T, L, V>::one;
    acc.reset();
    if (w.active) {
        for (unsigned base = w.start; base < w.count; base += U * w.stride) {
            float v[U][V];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const unsigned j = base + u * w.stride;
                if (j < w.count) load_floats<T, V>(x + w.offset(j), v[u]);
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if (base + u * w.stride < w.count) {
                    if constexpr (L == NCHW) acc.add_values(v[u]);
                    else acc.add_row(v[u]);
                }
            }
        }
    }
    block_reduce(acc, w.lanes);
    const unsigned splits = gridDim.x, tid = threadIdx.x;
    if (splits > 1) {  // the group's blocks meet in the workspace; one block per group is final already
        if (tid < w.lanes && w.active) {
#pragma unroll
            for (int k = 0; k < W; ++k) {
                const unsigned i = w.channel(k) * splits + blockIdx.x;
                ws_n[i] = acc.n;
                ws_mean[i] = acc.mean[k];
                ws_m2[i] = acc.m2[k];
            }
        }
        if (!last_block_of_group(counters, w.group)) return false;

        // The last block: merge the group's partials, thread (lane, r) taking splits r, r + rows, ...
        const volatile int* vn = ws_n;
        const volatile float* vmean = ws_mean;
        const volatile float* vm2 = ws_m2;
        const unsigned rows = blockDim.x / w.lanes;
        acc.reset();
        if (w.active) {
            for (unsigned s = tid / w.lanes; s < splits; s += rows) {
                float mb[W], qb[W];
#pragma unroll
                for (int k = 0; k < W; ++k) {
                    mb[k] = vmean[w.channel(k) * splits + s];
                    qb[k] = vm2[w.channel(k) * splits + s];
                }
                acc.merge(vn[w.channel(0) * splits + s], mb, qb);
            }
        }
        block_reduce(acc, w.lanes);
        if (tid == 0) counters[w.group] = 0u;
    }
    return true;
}

// Channel c's saved statistics from its (count n, mean, M2): invstd = 1 / sqrtf(M2 / n + eps) (the biased
// variance), scale = invstd gamma, and the running update (momentum weights the new batch; the running variance
// averages the Bessel-corrected M2 / (n - 1)). Shared by `stats` and `bnconf_merge_stats`.
__device__ __forceinline__ void finish_stats(unsigned c, float n, float mean, float m2, float eps, float momentum,
                                             const float* __restrict__ gamma, int update_running,
                                             float* __restrict__ running_mean, float* __restrict__ running_var,
                                             float* __restrict__ save_mean, float* __restrict__ save_invstd,
                                             float* __restrict__ scale) {
    const float invstd = 1.0f / sqrtf(m2 / n + eps);
    save_mean[c] = mean;
    save_invstd[c] = invstd;
    scale[c] = invstd * gamma[c];
    if (update_running) {
        const float keep = 1.0f - momentum;
        running_mean[c] = fmaf(momentum, mean, keep * running_mean[c]);
        running_var[c] = fmaf(momentum, m2 / (n - 1.0f), keep * running_var[c]);
    }
}

template <typename T, int L, int V>
__device__ __forceinline__ void stats(const T* __restrict__ x, unsigned N, unsigned C, unsigned S, unsigned lanes,
                                      float eps, float momentum, const float* __restrict__ gamma,
                                      int update_running, float* __restrict__ running_mean,
                                      float* __restrict__ running_var, int* ws_n, float* ws_mean, float* ws_m2,
                                      unsigned* counters, float* __restrict__ save_mean,
                                      float* __restrict__ save_invstd, float* __restrict__ scale) {
    using Wk = Walk<L, V>;
    constexpr int W = Wk::W;
    const Wk w(N, C, S, lanes, false);
    Moments<W> acc;
    if (!reduce_moments<T, L, V>(x, w, ws_n, ws_mean, ws_m2, counters, acc)) return;
    if (threadIdx.x < w.lanes && w.active) {
        const float n = static_cast<float>(acc.n);
#pragma unroll
        for (int k = 0; k < W; ++k)
            finish_stats(w.channel(k), n, acc.mean[k], acc.m2[k], eps, momentum, gamma, update_running,
                         running_mean, running_var, save_mean, save_invstd, scale);
    }
}

// One replica's partial statistics (synchronized batch norm across replicas): the group's (count, mean, M2) by
// the same reduction as `stats`, written per channel to part_n, part_mean, part_m2 (nothing else is written).
template <typename T, int L, int V>
__device__ __forceinline__ void partial_stats(const T* __restrict__ x, unsigned N, unsigned C, unsigned S,
                                              unsigned lanes, int* ws_n, float* ws_mean, float* ws_m2,
                                              unsigned* counters, int* __restrict__ part_n,
                                              float* __restrict__ part_mean, float* __restrict__ part_m2) {
    using Wk = Walk<L, V>;
    constexpr int W = Wk::W;
    const Wk w(N, C, S, lanes, false);
    Moments<W> acc;
    if (!reduce_moments<T, L, V>(x, w, ws_n, ws_mean, ws_m2, counters, acc)) return;
    if (threadIdx.x < w.lanes && w.active) {
#pragma unroll
        for (int k = 0; k < W; ++k) {
            const unsigned c = w.channel(k);
            part_n[c] = acc.n;
            part_mean[c] = acc.mean[k];
            part_m2[c] = acc.m2[k];
        }
    }
}

template <typename T, int L, int V>
__device__ __forceinline__ void apply(const T* __restrict__ x, T* __restrict__ y, unsigned N, unsigned C, unsigned S,
                                      unsigned lanes, const float* __restrict__ mean, const float* __restrict__ scale,
                                      const float* __restrict__ beta) {
    using Wk = Walk<L, V>;
    constexpr int W = Wk::W;
    constexpr int U = Unroll<T, L, V>::one;
    const Wk w(N, C, S, lanes, true);
    if (!w.active) return;
    float m[W], a[W], b[W];
#pragma unroll
    for (int k = 0; k < W; ++k) {
        m[k] = mean[w.channel(k)];
        a[k] = scale[w.channel(k)];
        b[k] = beta[w.channel(k)];
    }
    for (unsigned base = w.start; base < w.count; base += U * w.stride) {
        float v[U][V];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const unsigned j = base + u * w.stride;
            if (j < w.count) load_floats<T, V>(x + w.offset(item<true>(j, w.count)), v[u]);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const unsigned j = base + u * w.stride;
            if (j < w.count) {
#pragma unroll
                for (int e = 0; e < V; ++e) {
                    const int k = W == 1 ? 0 : e;
                    v[u][e] = fmaf(v[u][e] - m[k], a[k], b[k]);
                }
                store_floats<T, V>(y + w.offset(item<true>(j, w.count)), v[u]);
            }
        }
    }
}

// The float32 sums of dy and dy (x - mean) of the channels of this block's group, reduced as in
// `reduce_moments` (workspace and last-block merge when gridDim.x > 1). Returns false in the blocks that are
// done; true in the block holding the result (valid in threads tid < w.lanes with w.active). Shared by
// `bwd_reduce` and `bwd_partial`.
template <typename T, int L, int V>
__device__ __forceinline__ bool reduce_grad_sums(const T* __restrict__ x, const T* __restrict__ dy,
                                                 const Walk<L, V>& w, const float* __restrict__ mean, float* ws_dy,
                                                 float* ws_dyxmu, unsigned* counters, Sums<Walk<L, V>::W>& acc) {
    constexpr int W = Walk<L, V>::W;
    constexpr int U = Unroll<T, L, V>::two;
    acc.reset();
    if (w.active) {
        float m[W];
#pragma unroll
        for (int k = 0; k < W; ++k) m[k] = mean[w.channel(k)];
        for (unsigned base = w.start; base < w.count; base += U * w.stride) {
            float xv[U][V], gv[U][V];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const unsigned j = base + u * w.stride;
                if (j < w.count) {
                    load_floats<T, V>(x + w.offset(j), xv[u]);
                    load_floats<T, V>(dy + w.offset(j), gv[u]);
                }
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if (base + u * w.stride < w.count) {
#pragma unroll
                    for (int e = 0; e < V; ++e) {
                        const int k = W == 1 ? 0 : e;
                        acc.dy[k] += gv[u][e];
                        acc.dyxmu[k] = fmaf(gv[u][e], xv[u][e] - m[k], acc.dyxmu[k]);
                    }
                }
            }
        }
    }
    block_reduce(acc, w.lanes);
    const unsigned splits = gridDim.x, tid = threadIdx.x;
    if (splits > 1) {  // as in stats: partials, then the last block of the group merges them
        if (tid < w.lanes && w.active) {
#pragma unroll
            for (int k = 0; k < W; ++k) {
                const unsigned i = w.channel(k) * splits + blockIdx.x;
                ws_dy[i] = acc.dy[k];
                ws_dyxmu[i] = acc.dyxmu[k];
            }
        }
        if (!last_block_of_group(counters, w.group)) return false;

        const volatile float* vdy = ws_dy;
        const volatile float* vdyxmu = ws_dyxmu;
        const unsigned rows = blockDim.x / w.lanes;
        acc.reset();
        if (w.active) {
            for (unsigned s = tid / w.lanes; s < splits; s += rows) {
                Sums<W> p;
#pragma unroll
                for (int k = 0; k < W; ++k) {
                    p.dy[k] = vdy[w.channel(k) * splits + s];
                    p.dyxmu[k] = vdyxmu[w.channel(k) * splits + s];
                }
                acc.merge(p);
            }
        }
        block_reduce(acc, w.lanes);
        if (tid == 0) counters[w.group] = 0u;
    }
    return true;
}

// Channel c's parameter gradients and dx coefficients from sum_dy = sum(dy), sum_dyxmu = sum(dy (x - mean)) over
// the n values the statistics came from: dbeta = sum_dy, dgamma = sum_dyxmu invstd, coef_a = gamma invstd,
// training: coef_b = sum_dy / n, coef_k = gamma invstd^3 sum_dyxmu / n (eval: 0). Shared by `bwd_reduce` and
// `bnconf_bwd_merge`.
__device__ __forceinline__ void finish_grads(unsigned c, float sum_dy, float sum_dyxmu, float n, int train,
                                             const float* __restrict__ invstd, const float* __restrict__ gamma,
                                             float* __restrict__ dgamma, float* __restrict__ dbeta,
                                             float* __restrict__ coef_a, float* __restrict__ coef_b,
                                             float* __restrict__ coef_k) {
    const float s = invstd[c];
    const float gs = gamma[c] * s;
    dbeta[c] = sum_dy;
    dgamma[c] = sum_dyxmu * s;
    coef_a[c] = gs;
    coef_b[c] = train ? sum_dy / n : 0.0f;
    coef_k[c] = train ? gs * s * (sum_dyxmu * s / n) : 0.0f;
}

template <typename T, int L, int V>
__device__ __forceinline__ void bwd_reduce(const T* __restrict__ x, const T* __restrict__ dy, unsigned N, unsigned C,
                                           unsigned S, unsigned lanes, const float* __restrict__ mean,
                                           const float* __restrict__ invstd, const float* __restrict__ gamma,
                                           int train, float* ws_dy, float* ws_dyxmu, unsigned* counters,
                                           float* __restrict__ dgamma, float* __restrict__ dbeta,
                                           float* __restrict__ coef_a, float* __restrict__ coef_b,
                                           float* __restrict__ coef_k) {
    using Wk = Walk<L, V>;
    constexpr int W = Wk::W;
    const Wk w(N, C, S, lanes, false);
    Sums<W> acc;
    if (!reduce_grad_sums<T, L, V>(x, dy, w, mean, ws_dy, ws_dyxmu, counters, acc)) return;
    if (threadIdx.x < w.lanes && w.active) {
        const float n = static_cast<float>(N) * static_cast<float>(S);
#pragma unroll
        for (int k = 0; k < W; ++k)
            finish_grads(w.channel(k), acc.dy[k], acc.dyxmu[k], n, train, invstd, gamma, dgamma, dbeta, coef_a,
                         coef_b, coef_k);
    }
}

// One replica's partial gradient sums (synchronized batch norm across replicas): sum(dy) and
// sum(dy (x - mean)) per channel over its shard, `mean` the global one, to part_dy and part_dyxmu.
template <typename T, int L, int V>
__device__ __forceinline__ void bwd_partial(const T* __restrict__ x, const T* __restrict__ dy, unsigned N,
                                            unsigned C, unsigned S, unsigned lanes, const float* __restrict__ mean,
                                            float* ws_dy, float* ws_dyxmu, unsigned* counters,
                                            float* __restrict__ part_dy, float* __restrict__ part_dyxmu) {
    using Wk = Walk<L, V>;
    constexpr int W = Wk::W;
    const Wk w(N, C, S, lanes, false);
    Sums<W> acc;
    if (!reduce_grad_sums<T, L, V>(x, dy, w, mean, ws_dy, ws_dyxmu, counters, acc)) return;
    if (threadIdx.x < w.lanes && w.active) {
#pragma unroll
        for (int k = 0; k < W; ++k) {
            part_dy[w.channel(k)] = acc.dy[k];
            part_dyxmu[w.channel(k)] = acc.dyxmu[k];
        }
    }
}

template <typename T, int L, int V>
__device__ __forceinline__ void dx_kernel(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx,
                                          unsigned N, unsigned C, unsigned S, unsigned lanes, int train,
                                          const float* __restrict__ mean, const float* __restrict__ coef_a,
                                          const float* __restrict__ coef_b, const float* __restrict__ coef_k) {
    using Wk = Walk<L, V>;
    constexpr int W = Wk::W;
    constexpr int U = Unroll<T, L, V>::two;
    const Wk w(N, C, S, lanes, true);
    if (!w.active) return;
    float m[W], a[W], b[W], kk[W];
#pragma unroll
    for (int k = 0; k < W; ++k) {
        m[k] = mean[w.channel(k)];
        a[k] = coef_a[w.channel(k)];
        b[k] = coef_b[w.channel(k)];
        kk[k] = coef_k[w.channel(k)];
    }
    for (unsigned base = w.start; base < w.count; base += U * w.stride) {
        float xv[U][V], gv[U][V];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const unsigned j = base + u * w.stride;
            if (j < w.count) {
                const unsigned o = w.offset(item<true>(j, w.count));
                load_floats<T, V>(dy + o, gv[u]);
                if (train) load_floats<T, V>(x + o, xv[u]);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const unsigned j = base + u * w.stride;
            if (j < w.count) {
#pragma unroll
                for (int e = 0; e < V; ++e) {
                    const int k = W == 1 ? 0 : e;
                    const float g = a[k] * (gv[u][e] - b[k]);
                    gv[u][e] = g;
                    if (train) gv[u][e] = fmaf(-kk[k], xv[u][e] - m[k], g);
                }
                store_floats<T, V>(dx + w.offset(item<true>(j, w.count)), gv[u]);
            }
        }
    }
}

}  // namespace bnk

// ------------------------------------------------------------------------------------------ entry points
extern "C" __global__ void __launch_bounds__(bnk::MAX_THREADS)
bnconf_eval_prep(const float* __restrict__ running_var, const float* __restrict__ gamma, float eps, unsigned C,
                 float* __restrict__ invstd, float* __restrict__ scale) {
    for (unsigned c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x) {
        const float s = 1.0f / sqrtf(running_var[c] + eps);
        invstd[c] = s;
        scale[c] = s * gamma[c];
    }
}

// Synchronized batch norm across W replicas (adapters/cuda_replicas.py): each replica exports its partial
// statistics (bnconf_partial_stats_*), an all-gather brings the W partials, stacked (W, C), to every device,
// and these kernels merge them there (one thread per channel; W small).
//   bnconf_merge_stats  Chan's count-weighted merge of (n_r, mean_r, M2_r) in replica order r = 0..W-1 (an empty
//                       replica, n_r = 0, is the identity), then the saved statistics and running update of the
//                       whole batch by finish_stats (N = sum n_r: biased variance M2 / N for invstd, M2 / (N - 1)
//                       in the running variance); save_var = M2 / N.
//   bnconf_bwd_merge    the all-reduce of the replicas' sum(dy) and sum(dy (x - mean)) (float32, replica order)
//                       and of their counts, then dgamma, dbeta and the training dx coefficients with the global
//                       count N (count-weighted) by finish_grads; each replica's dx is then bnconf_dx_* on its shard.
extern "C" __global__ void __launch_bounds__(bnk::MAX_THREADS)
bnconf_merge_stats(const int* __restrict__ part_n, const float* __restrict__ part_mean,
                   const float* __restrict__ part_m2, unsigned W, unsigned C, float eps, float momentum,
                   const float* __restrict__ gamma, int update_running, float* __restrict__ running_mean,
                   float* __restrict__ running_var, float* __restrict__ save_mean, float* __restrict__ save_var,
                   float* __restrict__ save_invstd, float* __restrict__ scale) {
    for (unsigned c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x) {
        bnk::Moments<1> acc;
        acc.reset();
        for (unsigned r = 0; r < W; ++r) {
            const unsigned i = r * C + c;
            const float mean_r[1] = {part_mean[i]};
            const float m2_r[1] = {part_m2[i]};
            acc.merge(part_n[i], mean_r, m2_r);
        }
        const float n = static_cast<float>(acc.n);
        save_var[c] = acc.m2[0] / n;
        bnk::finish_stats(c, n, acc.mean[0], acc.m2[0], eps, momentum, gamma, update_running, running_mean,
                          running_var, save_mean, save_invstd, scale);
    }
}

extern "C" __global__ void __launch_bounds__(bnk::MAX_THREADS)
bnconf_bwd_merge(const float* __restrict__ part_dy, const float* __restrict__ part_dyxmu,
                 const int* __restrict__ part_n, unsigned W, unsigned C, const float* __restrict__ invstd,
                 const float* __restrict__ gamma, float* __restrict__ dgamma, float* __restrict__ dbeta,
                 float* __restrict__ coef_a, float* __restrict__ coef_b, float* __restrict__ coef_k) {
    for (unsigned c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x) {
        float sum_dy = 0.0f, sum_dyxmu = 0.0f;
        int n = 0;
        for (unsigned r = 0; r < W; ++r) {
            const unsigned i = r * C + c;
            sum_dy += part_dy[i];
            sum_dyxmu += part_dyxmu[i];
            n += part_n[i];
        }
        bnk::finish_grads(c, sum_dy, sum_dyxmu, static_cast<float>(n), 1, invstd, gamma, dgamma, dbeta, coef_a,
                          coef_b, coef_k);
    }
}

#define BNCONF_KERNELS(T, TN, L, LN, V, VN)                                                                      \
    extern "C" __global__ void __launch_bounds__(bnk::MAX_THREADS) bnconf_stats_##LN##_##VN##_##TN(              \
        const T* __restrict__ x, unsigned N, unsigned C, unsigned S, unsigned lanes, float eps, float momentum,   \
        const float* __restrict__ gamma, int update_running, float* __restrict__ running_mean,                   \
        float* __restrict__ running_var, int* ws_n, float* ws_mean, float* ws_m2, unsigned* counters,             \
        float* __restrict__ save_mean, float* __restrict__ save_invstd, float* __restrict__ scale) {             \
        bnk::stats<T, L, V>(x, N, C, S, lanes, eps, momentum, gamma, update_running, running_mean, running_var,  \
                            ws_n, ws_mean, ws_m2, counters, save_mean, save_invstd, scale);                       \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(bnk::MAX_THREADS) bnconf_apply_##LN##_##VN##_##TN(              \
        const T* __restrict__ x, T* __restrict__ y, unsigned N, unsigned C, unsigned S, unsigned lanes,           \
        const float* __restrict__ mean, const float* __restrict__ scale, const float* __restrict__ beta) {        \
        bnk::apply<T, L, V>(x, y, N, C, S, lanes, mean, scale, beta);                                            \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(bnk::MAX_THREADS) bnconf_bwd_reduce_##LN##_##VN##_##TN(         \
        const T* __restrict__ x, const T* __restrict__ dy, unsigned N, unsigned C, unsigned S, unsigned lanes,    \
        const float* __restrict__ mean, const float* __restrict__ invstd, const float* __restrict__ gamma,        \
        int train, float* ws_dy, float* ws_dyxmu, unsigned* counters, float* __restrict__ dgamma,                \
        float* __restrict__ dbeta, float* __restrict__ coef_a, float* __restrict__ coef_b,                        \
        float* __restrict__ coef_k) {                                                                            \
        bnk::bwd_reduce<T, L, V>(x, dy, N, C, S, lanes, mean, invstd, gamma, train, ws_dy, ws_dyxmu, counters,  \
                                 dgamma, dbeta, coef_a, coef_b, coef_k);                                         \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(bnk::MAX_THREADS) bnconf_dx_##LN##_##VN##_##TN(                 \
        const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ dx, unsigned N, unsigned C,            \
        unsigned S, unsigned lanes, int train, const float* __restrict__ mean, const float* __restrict__ coef_a,  \
        const float* __restrict__ coef_b, const float* __restrict__ coef_k) {                                    \
        bnk::dx_kernel<T, L, V>(x, dy, dx, N, C, S, lanes, train, mean, coef_a, coef_b, coef_k);                 \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(bnk::MAX_THREADS) bnconf_partial_stats_##LN##_##VN##_##TN(      \
        const T* __restrict__ x, unsigned N, unsigned C, unsigned S, unsigned lanes, int* ws_n, float* ws_mean,   \
        float* ws_m2, unsigned* counters, int* __restrict__ part_n, float* __restrict__ part_mean,                \
        float* __restrict__ part_m2) {                                                                           \
        bnk::partial_stats<T, L, V>(x, N, C, S, lanes, ws_n, ws_mean, ws_m2, counters, part_n, part_mean,        \
                                    part_m2);                                                                    \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(bnk::MAX_THREADS) bnconf_bwd_partial_##LN##_##VN##_##TN(        \
        const T* __restrict__ x, const T* __restrict__ dy, unsigned N, unsigned C, unsigned S, unsigned lanes,    \
        const float* __restrict__ mean, float* ws_dy, float* ws_dyxmu, unsigned* counters,                       \
        float* __restrict__ part_dy, float* __restrict__ part_dyxmu) {                                           \
        bnk::bwd_partial<T, L, V>(x, dy, N, C, S, lanes, mean, ws_dy, ws_dyxmu, counters, part_dy, part_dyxmu);  \
    }

#define BNCONF_LAYOUTS(T, TN)                                                 \
    BNCONF_KERNELS(T, TN, bnk::NCHW, nchw, 16 / sizeof(T), v)                 \
    BNCONF_KERNELS(T, TN, bnk::NCHW, nchw, 1, s)                              \
    BNCONF_KERNELS(T, TN, bnk::NHWC, nhwc, 16 / sizeof(T), v)                 \
    BNCONF_KERNELS(T, TN, bnk::NHWC, nhwc, 1, s)

BNCONF_LAYOUTS(float, f32)
BNCONF_LAYOUTS(__half, f16)
BNCONF_LAYOUTS(__nv_bfloat16, bf16)
