// cuda_on_cpu.h: the CUDA execution model on the CPU, so that an unmodified .cu file of device code
// compiles with g++ (-std=c++20 -pthread) and its kernels run in CI without a GPU.
//
// Usage (one translation unit per shared library):
//     #include "cuda_on_cpu.h"
//     #include "batchnorm.cu"
//     extern "C" void bn_forward(const float* x, ..., int n) {
//         bnconf_cpu::launch(bn_forward_kernel, dim3(grid), dim3(256), x, ..., n);
//     }
// The .cu file may `#include <cuda_fp16.h>` / `<cuda_bf16.h>` / `<cuda_runtime.h>`: adapters/cuda/cpu_include
// holds stubs of those names that include this header (adapters/cuda_build.py puts it on the include path).
// The macro BNCONF_CUDA_ON_CPU is defined to 1 here; __CUDACC__ and __CUDA_ARCH__ are not defined.
//
// EXECUTION MODEL
// - One OS thread per CUDA thread. A pool of blockDim.x*y*z threads is created on the first launch with
//   that block size and reused by later launches (pools live until the process exits).
// - The blocks of a grid run one after another (blockIdx.x fastest, then y, then z), all threads of a
//   block at once. A launch returns when the grid has finished (like a launch followed by a device sync).
//   Launches are serialised by a process-wide mutex.
// - threadIdx, blockIdx (uint3), blockDim, gridDim (dim3) are thread_local; warpSize is 32; warp w of a
//   block is threads 32w..32w+31 in linear order (x fastest).
// - __syncthreads() is a std::barrier across the block. A thread that returns from the kernel early keeps
//   arriving at that barrier until the whole block has returned, so `if (i >= n) return;` followed by
//   __syncthreads() in the remaining threads works, as it does on current GPUs.
// - __shfl_sync, __shfl_up_sync, __shfl_down_sync, __shfl_xor_sync (any 4- or 8-byte trivially copyable
//   type: float, int, unsigned, ...; `width` a power of two <= 32), __ballot_sync, __any_sync, __all_sync
//   and __syncwarp go through a per-warp slot exchange with a 32-thread barrier.
// - __shared__ is `static`: correct because only one block runs at a time. Static shared arrays only.
// - Atomics (atomicAdd/Sub/Exch/Min/Max/Inc/Dec/CAS on int, unsigned, unsigned long long, float for Add/Exch)
//   are std::atomic_ref operations (sequentially consistent: stronger than CUDA's relaxed atomics).
//   __threadfence() / __threadfence_block() are sequentially consistent fences (under ThreadSanitizer, which
//   does not model fences, a read-modify-write of one global atomic instead).
// - Memory and math: __ldg and the cache-hint loads/stores (__ldcg __ldca __ldcs __ldlu __ldcv, __stcs
//   __stcg __stwb __stwt) are plain loads/stores of any type; float2/float3/float4/int2/int4/uint2/uint4
//   with CUDA's alignment (float4 16 bytes) and make_*; __half, __nv_bfloat16 (+ __half2, __nv_bfloat162)
//   with round-to-nearest-even conversions (__float2half[_rn], __float2bfloat16[_rn]) that handle NaN, Inf
//   and subnormals, and exact widening (__half2float, __bfloat162float); rsqrtf = 1/sqrtf; __fdividef,
//   __frcp_rn, __fsqrt_rn, __fmaf_rn, __fadd_rn, __fmul_rn, __expf, __logf, __powf, __saturatef;
//   min/max overloads; __float_as_uint/__uint_as_float/__float_as_int/__int_as_float; __popc, __clz, __ffs.
// - Qualifiers __global__ __device__ __host__ __forceinline__ __noinline__ __launch_bounds__(...)
//   __align__(n) __constant__ (a static const: initialised in the source only) and __restrict__ (g++ has it).
//
// LIMITS (what this header does not model; keep kernels within them)
// - No dynamic shared memory: `extern __shared__ T s[];` does not compile. Write `__shared__ T s[N];`
//   (not `static __shared__`, which expands to `static static`).
// - Shared memory persists from one block to the next (it is a static): a read of shared memory that the
//   block did not write sees the previous block's values instead of garbage, so such bugs can hide.
// - Block sizes must be a multiple of 32 and at most 1024 threads; grid dimensions at least 1.
// - Warp operations need all 32 lanes of the warp: the mask must be 0xffffffff (anything else aborts with a
//   message), and no lane of the warp may have returned from the kernel (that would deadlock).
//   __activemask() is 0xffffffff. Lanes do not run in lock-step: code relying on implicit warp-synchronous
//   execution without __syncwarp / shuffles is a race here (and on Volta+ GPUs).
// - No grid-wide synchronisation (cooperative groups), no spin-waits on other blocks (blocks run in
//   sequence: a block waiting for a later one never finishes), no streams, events, host API or
//   cudaMemcpyToSymbol. Races *between* blocks cannot show (blocks do not overlap): test last-block
//   merges on a GPU with compute-sanitizer as well.
// - No __half / __nv_bfloat16 arithmetic operators: the types convert implicitly to and from float, so
//   `a + b` on two halves computes in float here (on a GPU it would be half arithmetic): convert explicitly.
// - Floating point follows the host compiler: no flush-to-zero, fmaf is exact, rsqrtf is correctly rounded
//   1/sqrt (on a GPU up to 2 ulp), no FMA contraction with the default flags. Compare with tolerances.
// - printf and assert are the host's. Kernel exceptions terminate the process. A forked child process builds
//   fresh thread pools on its first launch (the parent's pool threads do not exist in the child).
#pragma once
#ifndef BNCONF_CUDA_ON_CPU
#define BNCONF_CUDA_ON_CPU 1
#endif

#include <algorithm>
#include <atomic>
#include <barrier>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <math.h>
#include <memory>
#include <mutex>
#include <new>
#include <pthread.h>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

// ---------------------------------------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static
#define __constant__ static const

// ------------------------------------------------------------------------------------- built-in variables
struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------------------------- vector types
#define BNCONF_VEC2(T, N, A) struct __attribute__((may_alias, aligned(A))) N { T x, y; }; \
    inline N make_##N(T x, T y) { return N{x, y}; }
#define BNCONF_VEC3(T, N) struct __attribute__((may_alias)) N { T x, y, z; }; \
    inline N make_##N(T x, T y, T z) { return N{x, y, z}; }
#define BNCONF_VEC4(T, N, A) struct __attribute__((may_alias, aligned(A))) N { T x, y, z, w; }; \
    inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
BNCONF_VEC2(float, float2, 8)
BNCONF_VEC3(float, float3)
BNCONF_VEC4(float, float4, 16)
BNCONF_VEC2(int, int2, 8)
BNCONF_VEC4(int, int4, 16)
BNCONF_VEC2(unsigned int, uint2, 8)
BNCONF_VEC4(unsigned int, uint4, 16)
#undef BNCONF_VEC2
#undef BNCONF_VEC3
#undef BNCONF_VEC4
inline uint3 make_uint3(unsigned int x, unsigned int y, unsigned int z) { return uint3{x, y, z}; }

// ------------------------------------------------------------------------------------ the execution engine
namespace bnconf_cpu {
namespace detail {

[[noreturn]] inline void fail(const char* what) {
    std::fprintf(stderr, "cuda_on_cpu: %s\n", what);
    std::fflush(stderr);
    std::abort();
}

struct Warp {
    std::barrier<> sync{32};
    std::uint64_t slot[32] = {};
};

struct Pool;
struct BlockDone {  // barrier completion: has every thread of the block returned from the kernel?
    Pool* pool;
    void operator()() noexcept;
};

// The threads of one block size. Per launch: the launcher and all workers meet at `start`, the workers run
// every block of the grid (meeting at `block` for __syncthreads and at the end of each block), then all
// meet at `done`.
struct Pool {
    explicit Pool(unsigned n)
        : nthreads(n), start(n + 1), done(n + 1), block(n, BlockDone{this}) {
        for (unsigned w = 0; w < n / 32; ++w) warps.push_back(std::make_unique<Warp>());
        for (unsigned t = 0; t < n; ++t) workers.emplace_back([this, t] { work(t); });
    }
    ~Pool() {
        stop = true;
        start.arrive_and_wait();
        for (auto& w : workers) w.join();
    }
    Pool(const Pool&) = delete;
    Pool& operator=(const Pool&) = delete;

    void run(dim3 grid, dim3 blk, const std::function<void()>& kernel) {
        job_grid = grid;
        job_block = blk;
        job = &kernel;
        start.arrive_and_wait();
        done.arrive_and_wait();
        job = nullptr;
    }

    void work(unsigned t);

    const unsigned nthreads;
    std::barrier<> start, done;
    std::barrier<BlockDone> block;
    std::atomic<unsigned> returned{0};  // threads of the current block that have left the kernel
    bool all_returned = false;          // written by the completion only, read after the barrier
    std::vector<std::unique_ptr<Warp>> warps;
    std::vector<std::thread> workers;
    bool stop = false;
    dim3 job_grid, job_block;
    const std::function<void()>* job = nullptr;
};

inline void BlockDone::operator()() noexcept {
    pool->all_returned = pool->returned.load() == pool->nthreads;
    if (pool->all_returned) pool->returned.store(0);
}

inline thread_local Pool* tl_pool = nullptr;
inline thread_local Warp* tl_warp = nullptr;
inline thread_local unsigned tl_lane = 0;

inline void Pool::work(unsigned t) {
    tl_pool = this;
    tl_warp = warps[t / 32].get();
    tl_lane = t % 32;
    for (;;) {
        start.arrive_and_wait();
        if (stop) return;
        const dim3 g = job_grid, b = job_block;
        gridDim = g;
        blockDim = b;
        threadIdx = uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
        for (unsigned z = 0; z < g.z; ++z)
            for (unsigned y = 0; y < g.y; ++y)
                for (unsigned x = 0; x < g.x; ++x) {
                    blockIdx = uint3{x, y, z};
                    (*job)();
                    returned.fetch_add(1);
                    do block.arrive_and_wait(); while (!all_returned);
                }
        done.arrive_and_wait();
    }
}

inline std::mutex& launch_mutex() {
    static std::mutex m;
    return m;
}

inline std::map<unsigned, std::unique_ptr<Pool>>& pools() {
    static std::map<unsigned, std::unique_ptr<Pool>> p;
    return p;
}

// A forked child has none of the parent's pool threads: it forgets the pools (leaking them, never joining
// threads that do not exist there) and builds its own on its first launch.
inline void forget_pools_after_fork() {
    for (auto& entry : pools()) (void)entry.second.release();
    pools().clear();
    new (&launch_mutex()) std::mutex();
}

inline Pool& pool_for(unsigned nthreads) {
    static const bool fork_handler = (pthread_atfork(nullptr, nullptr, forget_pools_after_fork), true);
    (void)fork_handler;
    auto& p = pools()[nthreads];
    if (!p) p = std::make_unique<Pool>(nthreads);
    return *p;
}

inline Warp& warp() {
    if (!tl_warp) fail("a warp operation was called outside a kernel launched by bnconf_cpu::launch");
    return *tl_warp;
}

inline void check_full_mask(unsigned mask, const char* op) {
    if (mask != 0xffffffffu) {
        std::string m = std::string(op) + ": only the full mask 0xffffffff is supported (all 32 lanes take part)";
        fail(m.c_str());
    }
}

template <class T>
T exchange(T v, unsigned (*source)(unsigned lane, int arg, int width), int arg, int width) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move 4- or 8-byte values");
    if (width <= 0 || width > 32 || (width & (width - 1))) fail("shuffle width must be a power of two <= 32");
    Warp& w = warp();
    const unsigned lane = tl_lane;
    std::uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.slot[lane] = bits;
    w.sync.arrive_and_wait();
    const std::uint64_t got = w.slot[source(lane, arg, width)];
    w.sync.arrive_and_wait();  // nobody overwrites a slot before every lane has read
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}

inline unsigned src_idx(unsigned lane, int src, int width) {
    return (lane & ~unsigned(width - 1)) + (unsigned(src) & unsigned(width - 1));
}
inline unsigned src_up(unsigned lane, int delta, int width) {
    return (lane & unsigned(width - 1)) >= unsigned(delta) ? lane - unsigned(delta) : lane;
}
inline unsigned src_down(unsigned lane, int delta, int width) {
    return (lane & unsigned(width - 1)) + unsigned(delta) < unsigned(width) ? lane + unsigned(delta) : lane;
}
inline unsigned src_xor(unsigned lane, int mask, int width) {
    const unsigned s = lane ^ unsigned(mask);
    return s >= (lane & ~unsigned(width - 1)) + unsigned(width) || s >= 32 ? lane : s;
}

inline unsigned ballot(int pred) {
    Warp& w = warp();
    w.slot[tl_lane] = pred ? 1u : 0u;
    w.sync.arrive_and_wait();
    unsigned bits = 0;
    for (unsigned l = 0; l < 32; ++l) bits |= unsigned(w.slot[l] != 0) << l;
    w.sync.arrive_and_wait();
    return bits;
}

inline std::atomic<unsigned>& fence_word() {
    static std::atomic<unsigned> word{0};
    return word;
}

}  // namespace detail

// Runs kernel<<<grid, block>>>(args...) to completion. Arguments convert to the kernel's parameter types.
template <class... P, class... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, A... args) {
    static_assert(sizeof...(P) == sizeof...(A), "launch: wrong number of kernel arguments");
    const unsigned long long n = 1ull * block.x * block.y * block.z;
    if (n == 0 || n > 1024 || n % 32 != 0)
        throw std::invalid_argument("bnconf_cpu::launch: block size must be a multiple of 32 and at most 1024, got " +
                                    std::to_string(n));
    if (grid.x == 0 || grid.y == 0 || grid.z == 0)
        throw std::invalid_argument("bnconf_cpu::launch: every grid dimension must be at least 1");
    if (detail::tl_pool) throw std::logic_error("bnconf_cpu::launch: a kernel cannot launch a kernel");
    const std::tuple<P...> params(static_cast<P>(args)...);
    const std::function<void()> body = [&params, kernel] { std::apply(kernel, params); };
    std::lock_guard<std::mutex> lock(detail::launch_mutex());
    detail::pool_for(unsigned(n)).run(grid, block, body);
}

}  // namespace bnconf_cpu

// ------------------------------------------------------------------------------------------ synchronisation
inline void __syncthreads() {
    if (!bnconf_cpu::detail::tl_pool) bnconf_cpu::detail::fail("__syncthreads outside a kernel launch");
    bnconf_cpu::detail::tl_pool->block.arrive_and_wait();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    bnconf_cpu::detail::check_full_mask(mask, "__syncwarp");
    bnconf_cpu::detail::warp().sync.arrive_and_wait();
}
inline void __threadfence() {
#if defined(__SANITIZE_THREAD__)
    bnconf_cpu::detail::fence_word().fetch_add(1, std::memory_order_seq_cst);
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}
inline void __threadfence_block() { __threadfence(); }
inline unsigned __activemask() { return 0xffffffffu; }

// ------------------------------------------------------------------------------------------- warp shuffles
template <class T>
T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize) {
    bnconf_cpu::detail::check_full_mask(mask, "__shfl_sync");
    return bnconf_cpu::detail::exchange(var, bnconf_cpu::detail::src_idx, srcLane, width);
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {
    bnconf_cpu::detail::check_full_mask(mask, "__shfl_up_sync");
    return bnconf_cpu::detail::exchange(var, bnconf_cpu::detail::src_up, int(delta), width);
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {
    bnconf_cpu::detail::check_full_mask(mask, "__shfl_down_sync");
    return bnconf_cpu::detail::exchange(var, bnconf_cpu::detail::src_down, int(delta), width);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize) {
    bnconf_cpu::detail::check_full_mask(mask, "__shfl_xor_sync");
    return bnconf_cpu::detail::exchange(var, bnconf_cpu::detail::src_xor, laneMask, width);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
    bnconf_cpu::detail::check_full_mask(mask, "__ballot_sync");
    return bnconf_cpu::detail::ballot(pred);
}
inline int __any_sync(unsigned mask, int pred) {
    bnconf_cpu::detail::check_full_mask(mask, "__any_sync");
    return bnconf_cpu::detail::ballot(pred) != 0;
}
inline int __all_sync(unsigned mask, int pred) {
    bnconf_cpu::detail::check_full_mask(mask, "__all_sync");
    return bnconf_cpu::detail::ballot(pred) == 0xffffffffu;
}

// ------------------------------------------------------------------------------------------------- atomics
#define BNCONF_ATOMIC_RMW(T)                                                                                   \
    inline T atomicAdd(T* a, T v) { return std::atomic_ref<T>(*a).fetch_add(v); }                              \
    inline T atomicExch(T* a, T v) { return std::atomic_ref<T>(*a).exchange(v); }                              \
    inline T atomicCAS(T* a, T compare, T v) {                                                                 \
        std::atomic_ref<T>(*a).compare_exchange_strong(compare, v);                                            \
        return compare;                                                                                        \
    }
BNCONF_ATOMIC_RMW(int)
BNCONF_ATOMIC_RMW(unsigned int)
BNCONF_ATOMIC_RMW(unsigned long long)
#undef BNCONF_ATOMIC_RMW
#define BNCONF_ATOMIC_INTEGER(T)                                                                               \
    inline T atomicSub(T* a, T v) { return std::atomic_ref<T>(*a).fetch_sub(v); }                              \
    inline T atomicAnd(T* a, T v) { return std::atomic_ref<T>(*a).fetch_and(v); }                              \
    inline T atomicOr(T* a, T v) { return std::atomic_ref<T>(*a).fetch_or(v); }                                \
    inline T atomicXor(T* a, T v) { return std::atomic_ref<T>(*a).fetch_xor(v); }                              \
    inline T atomicMax(T* a, T v) {                                                                            \
        std::atomic_ref<T> r(*a);                                                                              \
        T old = r.load();                                                                                      \
        while (old < v && !r.compare_exchange_weak(old, v)) {}                                                 \
        return old;                                                                                            \
    }                                                                                                          \
    inline T atomicMin(T* a, T v) {                                                                            \
        std::atomic_ref<T> r(*a);                                                                              \
        T old = r.load();                                                                                      \
        while (v < old && !r.compare_exchange_weak(old, v)) {}                                                 \
        return old;                                                                                            \
    }
BNCONF_ATOMIC_INTEGER(int)
BNCONF_ATOMIC_INTEGER(unsigned int)
BNCONF_ATOMIC_INTEGER(unsigned long long)
#undef BNCONF_ATOMIC_INTEGER
inline float atomicAdd(float* a, float v) { return std::atomic_ref<float>(*a).fetch_add(v); }
inline float atomicExch(float* a, float v) { return std::atomic_ref<float>(*a).exchange(v); }
// ((old >= limit) ? 0 : old + 1), returns old
inline unsigned atomicInc(unsigned* a, unsigned limit) {
    std::atomic_ref<unsigned> r(*a);
    unsigned old = r.load();
    while (!r.compare_exchange_weak(old, old >= limit ? 0u : old + 1u)) {}
    return old;
}
// ((old == 0) || (old > limit)) ? limit : old - 1, returns old
inline unsigned atomicDec(unsigned* a, unsigned limit) {
    std::atomic_ref<unsigned> r(*a);
    unsigned old = r.load();
    while (!r.compare_exchange_weak(old, (old == 0u || old > limit) ? limit : old - 1u)) {}
    return old;
}

// ------------------------------------------------------------------------------------ loads and stores
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ------------------------------------------------------------------------------------------- float math
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __powf(float a, float b) { return std::pow(a, b); }
inline float __saturatef(float x) { return x != x ? 0.0f : std::min(std::max(x, 0.0f), 1.0f); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(unsigned(x)); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(unsigned(x)) + 1; }

// --------------------------------------------------------------------------------- __half, __nv_bfloat16
namespace bnconf_cpu::detail {
// float -> IEEE binary16, round to nearest even; NaN stays NaN (quiet, sign and top payload bits kept)
inline std::uint16_t float_to_half_bits(float f) {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    const std::uint16_t sign = std::uint16_t((x >> 16) & 0x8000u);
    std::uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u | std::uint16_t((a >> 13) & 0x3ffu);  // NaN
    if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520: rounds to infinity (or is infinity)
    if (a < 0x38800000u) {                         // below 2^-14: a subnormal half (or zero)
        // adding 0.5f aligns the half's subnormal ulp (2^-24) with the float's ulp: the float adder rounds
        const float r = std::bit_cast<float>(a) + 0.5f;
        return sign | std::uint16_t(std::bit_cast<std::uint32_t>(r) - 0x3f000000u);
    }
    a += 0xc8000fffu + ((a >> 13) & 1u);  // rebias exponent 127 -> 15 (mod 2^32), round to nearest even
    return sign | std::uint16_t(a >> 13);
}
inline float half_bits_to_float(std::uint16_t h) {
    const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
    const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float
        const float v = float(m) * 0x1p-24f;
        return std::bit_cast<float>(std::bit_cast<std::uint32_t>(v) | sign);
    }
    if (e == 31) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
    return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
}
// float -> bfloat16, round to nearest even; NaN stays NaN (quiet)
inline std::uint16_t float_to_bfloat16_bits(float f) {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((x >> 16) | 0x40u);
    return std::uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bfloat16_bits_to_float(std::uint16_t b) { return std::bit_cast<float>(std::uint32_t(b) << 16); }
}  // namespace bnconf_cpu::detail

struct __half {
    unsigned short __x;
    __half() = default;
    __half(float f) : __x(bnconf_cpu::detail::float_to_half_bits(f)) {}
    operator float() const { return bnconf_cpu::detail::half_bits_to_float(__x); }
};
struct __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    __nv_bfloat16(float f) : __x(bnconf_cpu::detail::float_to_bfloat16_bits(f)) {}
    operator float() const { return bnconf_cpu::detail::bfloat16_bits_to_float(__x); }
};
struct alignas(4) __half2 { __half x, y; };
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

inline __half __ushort_as_half(unsigned short b) { __half h; h.__x = b; return h; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline short __half_as_short(__half h) { return short(h.__x); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { __nv_bfloat16 h; h.__x = b; return h; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline short __bfloat16_as_short(__nv_bfloat16 h) { return short(h.__x); }

inline float __half2float(__half h) { return bnconf_cpu::detail::half_bits_to_float(h.__x); }
inline __half __float2half(float f) { return __ushort_as_half(bnconf_cpu::detail::float_to_half_bits(f)); }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return bnconf_cpu::detail::bfloat16_bits_to_float(h.__x); }
inline __nv_bfloat16 __float2bfloat16(float f) {
    return __ushort_as_bfloat16(bnconf_cpu::detail::float_to_bfloat16_bits(f));
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }

inline __half2 __halves2half2(__half a, __half b) { return __half2{a, b}; }
inline __half2 __floats2half2_rn(float a, float b) { return __half2{__float2half(a), __float2half(b)}; }
inline __half2 __float22half2_rn(float2 v) { return __floats2half2_rn(v.x, v.y); }
inline __half2 __float2half2_rn(float a) { return __floats2half2_rn(a, a); }
inline float2 __half22float2(__half2 v) { return float2{__half2float(v.x), __half2float(v.y)}; }
inline float __low2float(__half2 v) { return __half2float(v.x); }
inline float __high2float(__half2 v) { return __half2float(v.y); }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return __nv_bfloat162{a, b}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162{__float2bfloat16(a), __float2bfloat16(b)};
}
inline __nv_bfloat162 __float22bfloat162_rn(float2 v) { return __floats2bfloat162_rn(v.x, v.y); }
inline float2 __bfloat1622float2(__nv_bfloat162 v) { return float2{__bfloat162float(v.x), __bfloat162float(v.y)}; }
inline float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
inline float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }
