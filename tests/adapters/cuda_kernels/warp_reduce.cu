// Test kernels for the CPU execution model: warp shuffles.
#define FULL_MASK 0xffffffffu

// One sum per warp through __shfl_down_sync; lane 0 writes it.
extern "C" __global__ void warp_sums(const float* __restrict__ x, float* __restrict__ sums) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[i];
    for (int offset = warpSize / 2; offset > 0; offset /= 2) v += __shfl_down_sync(FULL_MASK, v, offset);
    if ((threadIdx.x & 31) == 0) sums[i / 32] = v;
}

// Every lane gets the warp's sum through a __shfl_xor_sync butterfly (int).
extern "C" __global__ void warp_allreduce(const int* __restrict__ x, int* __restrict__ out) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    int v = x[i];
    for (int mask = 16; mask > 0; mask /= 2) v += __shfl_xor_sync(FULL_MASK, v, mask);
    out[i] = v;
}

// What each lane receives from each shuffle, for a comparison with CUDA's documented semantics.
// kind 0: __shfl_sync(lane value, arg), 1: up, 2: down, 3: xor; the value shuffled is 100 * lane (unsigned).
extern "C" __global__ void shuffle_probe(unsigned* __restrict__ out, int kind, int arg, int width) {
    const unsigned lane = threadIdx.x & 31;
    const unsigned v = 100u * lane;
    unsigned r = 0;
    if (kind == 0) r = __shfl_sync(FULL_MASK, v, arg, width);
    if (kind == 1) r = __shfl_up_sync(FULL_MASK, v, arg, width);
    if (kind == 2) r = __shfl_down_sync(FULL_MASK, v, arg, width);
    if (kind == 3) r = __shfl_xor_sync(FULL_MASK, v, arg, width);
    out[blockIdx.x * blockDim.x + threadIdx.x] = r;
}

// Ballot of odd lanes with a value above a threshold.
extern "C" __global__ void warp_ballot(const float* __restrict__ x, unsigned* __restrict__ out, float threshold) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned b = __ballot_sync(FULL_MASK, x[i] > threshold);
    if ((threadIdx.x & 31) == 0) out[i / 32] = b;
}
