// Test kernel for the CPU execution model: a block reduction through shared memory and __syncthreads.
// Compiled with -DBNCONF_TEST_DROP_SYNC (by the ThreadSanitizer test only) the barrier between the stores to
// shared memory and the first reads of other threads' values is removed: a data race TSan must report.
#define BLOCK_REDUCE_THREADS 256

extern "C" __global__ void __launch_bounds__(BLOCK_REDUCE_THREADS)
block_sum(const float* __restrict__ x, float* __restrict__ block_sums, int n) {
    __shared__ float partial[BLOCK_REDUCE_THREADS];
    const int t = threadIdx.x;
    float v = 0.0f;
    for (int i = blockIdx.x * blockDim.x + t; i < n; i += blockDim.x * gridDim.x) v += __ldg(x + i);
    partial[t] = v;
#ifndef BNCONF_TEST_DROP_SYNC
    __syncthreads();
#endif
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) partial[t] += partial[t + stride];
        __syncthreads();
    }
    if (t == 0) block_sums[blockIdx.x] = partial[0];
}

// 2-D blocks: threadIdx.y and blockDim.y take part; out[blockIdx] = sum over the block of (y * bx + x).
extern "C" __global__ void block_index_sum(int* out) {
    __shared__ int total;
    if (threadIdx.x == 0 && threadIdx.y == 0) total = 0;
    __syncthreads();
    atomicAdd(&total, int(threadIdx.y * blockDim.x + threadIdx.x));
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) out[blockIdx.y * gridDim.x + blockIdx.x] = total;
}

// Threads past n return before a __syncthreads that the others still reach.
extern "C" __global__ void early_exit_sum(const float* __restrict__ x, float* __restrict__ out, int n) {
    __shared__ float values[BLOCK_REDUCE_THREADS];
    const int t = threadIdx.x;
    if (t >= n) return;
    values[t] = x[blockIdx.x * n + t];
    __syncthreads();
    if (t == 0) {
        float s = 0.0f;
        for (int i = 0; i < n; ++i) s += values[i];
        out[blockIdx.x] = s;
    }
}
