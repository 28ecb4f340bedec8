// The test kernels on the CPU: the execution-model header, the unchanged .cu files, extern "C" launchers.
#include "cuda_on_cpu.h"

#include "block_reduce.cu"
#include "conversions.cu"
#include "last_block.cu"
#include "warp_reduce.cu"

namespace {
unsigned blocks_for(int n, unsigned threads) { return unsigned((n + threads - 1) / threads); }
}

extern "C" {
void launch_block_sum(const float* x, float* block_sums, int n, int blocks) {
    bnconf_cpu::launch(block_sum, dim3(blocks), dim3(BLOCK_REDUCE_THREADS), x, block_sums, n);
}
void launch_block_index_sum(int* out, int gx, int gy, int bx, int by) {
    bnconf_cpu::launch(block_index_sum, dim3(gx, gy), dim3(bx, by), out);
}
void launch_early_exit_sum(const float* x, float* out, int n, int blocks, int threads) {
    bnconf_cpu::launch(early_exit_sum, dim3(blocks), dim3(threads), x, out, n);
}
void launch_warp_sums(const float* x, float* sums, int n, int threads) {
    bnconf_cpu::launch(warp_sums, dim3(n / threads), dim3(threads), x, sums);
}
void launch_warp_allreduce(const int* x, int* out, int n, int threads) {
    bnconf_cpu::launch(warp_allreduce, dim3(n / threads), dim3(threads), x, out);
}
void launch_shuffle_probe(unsigned* out, int kind, int arg, int width) {
    bnconf_cpu::launch(shuffle_probe, dim3(1), dim3(32), out, kind, arg, width);
}
void launch_warp_ballot(const float* x, unsigned* out, float threshold, int n) {
    bnconf_cpu::launch(warp_ballot, dim3(n / 64), dim3(64), x, out, threshold);
}
void launch_grid_sum(const float* x, float* partials, unsigned* counter, float* out, int n, int blocks) {
    bnconf_cpu::launch(grid_sum, dim3(blocks), dim3(LAST_BLOCK_THREADS), x, partials, counter, out, n);
}
void launch_atomic_counts(float* fsum, int* isum, unsigned* usum, int* cas_max, int blocks, int threads) {
    bnconf_cpu::launch(atomic_counts, dim3(blocks), dim3(threads), fsum, isum, usum, cas_max);
}
void launch_float_to_half_bits(const float* x, unsigned short* out, int n) {
    bnconf_cpu::launch(float_to_half_bits, dim3(blocks_for(n, 256)), dim3(256), x, out, n);
}
void launch_half_bits_to_float(const unsigned short* h, float* out, int n) {
    bnconf_cpu::launch(half_bits_to_float, dim3(blocks_for(n, 256)), dim3(256), h, out, n);
}
void launch_float_to_bfloat16_bits(const float* x, unsigned short* out, int n) {
    bnconf_cpu::launch(float_to_bfloat16_bits, dim3(blocks_for(n, 256)), dim3(256), x, out, n);
}
void launch_bfloat16_bits_to_float(const unsigned short* b, float* out, int n) {
    bnconf_cpu::launch(bfloat16_bits_to_float, dim3(blocks_for(n, 256)), dim3(256), b, out, n);
}
void launch_axpb4(const float* x, float* y, float a, float b, int n4) {
    bnconf_cpu::launch(axpb4, dim3(blocks_for(n4, 64)), dim3(64), x, y, a, b, n4);
}
void launch_half_scale(const __half* x, __half* y, float s, int n) {
    bnconf_cpu::launch(half_scale, dim3(blocks_for(n, 64)), dim3(64), x, y, s, n);
}
}
