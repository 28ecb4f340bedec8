// Test kernels for the CPU execution model: float16/bfloat16 conversions, float4 loads and streaming stores.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

extern "C" __global__ void float_to_half_bits(const float* __restrict__ x, unsigned short* __restrict__ out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __half_as_ushort(__float2half_rn(x[i]));
}
extern "C" __global__ void half_bits_to_float(const unsigned short* __restrict__ h, float* __restrict__ out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __half2float(__ushort_as_half(h[i]));
}
extern "C" __global__ void float_to_bfloat16_bits(const float* __restrict__ x, unsigned short* __restrict__ out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
}
extern "C" __global__ void bfloat16_bits_to_float(const unsigned short* __restrict__ b, float* __restrict__ out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __bfloat162float(__ushort_as_bfloat16(b[i]));
}

// y = a * x + b over n4 float4s with 128-bit loads and streaming stores.
extern "C" __global__ void axpb4(const float* __restrict__ x, float* __restrict__ y, float a, float b, int n4) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n4) return;
    const float4 v = __ldg(reinterpret_cast<const float4*>(x) + i);
    __stcs(reinterpret_cast<float4*>(y) + i, make_float4(fmaf(a, v.x, b), fmaf(a, v.y, b), fmaf(a, v.z, b), fmaf(a, v.w, b)));
}

// Half inputs and outputs with float math in between: y = half(float(x) * rsqrtf(s)).
extern "C" __global__ void half_scale(const __half* __restrict__ x, __half* __restrict__ y, float s, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2half(__half2float(x[i]) * rsqrtf(s));
}
