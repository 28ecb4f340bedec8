// Test kernel for the CPU execution model: a grid-wide sum where each block writes a partial, and the last
// block to finish (an atomicInc ticket after __threadfence) merges them and resets the counter.
#define LAST_BLOCK_THREADS 128

extern "C" __global__ void __launch_bounds__(LAST_BLOCK_THREADS)
grid_sum(const float* __restrict__ x, float* __restrict__ partials, unsigned* __restrict__ counter,
         float* __restrict__ out, int n) {
    __shared__ float warp_partial[LAST_BLOCK_THREADS / 32];
    __shared__ bool is_last;
    float v = 0.0f;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) v += x[i];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if ((threadIdx.x & 31) == 0) warp_partial[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int w = 0; w < LAST_BLOCK_THREADS / 32; ++w) s += warp_partial[w];
        partials[blockIdx.x] = s;
        __threadfence();
        const unsigned ticket = atomicInc(counter, gridDim.x - 1);  // wraps to 0 after the last block
        is_last = ticket == gridDim.x - 1;
    }
    __syncthreads();
    if (is_last && threadIdx.x == 0) {
        float s = 0.0f;
        for (unsigned b = 0; b < gridDim.x; ++b) s += partials[b];
        *out = s;
    }
}

// atomicAdd on float, int and unsigned, atomicCAS, across all blocks.
extern "C" __global__ void atomic_counts(float* __restrict__ fsum, int* __restrict__ isum, unsigned* __restrict__ usum,
                                         int* __restrict__ cas_max) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(fsum, 0.5f);
    atomicAdd(isum, i);
    atomicAdd(usum, 2u);
    int seen = atomicAdd(cas_max, 0);  // an atomic read: a plain one would race with the CAS of other threads
    while (seen < i) {
        const int before = atomicCAS(cas_max, seen, i);
        if (before == seen) break;
        seen = before;
    }
}
