// ThreadSanitizer driver for the kernels of synchronized batch norm across replicas (adapters/cuda/batchnorm.cu
// through batchnorm_cpu.cpp; tests/adapters/test_cuda_replicas.py): two replicas, replica 0 through the nchw
// kernels and replica 1 through the nhwc ones (float32, both with two blocks per channel group: the last-block
// merge), partial statistics, their merge, the gradient partial sums with the merged mean, and their merge.
// Exit status 0 when every launch was accepted and the counts and results are as expected; races go to stderr.
#include <cmath>
#include <cstdio>
#include <vector>

#include "cuda_on_cpu.h"

extern "C" {
int launch_bnconf_partial_stats_nchw_s_f32(unsigned, unsigned, unsigned, const float*, unsigned, unsigned, unsigned,
                                           unsigned, int*, float*, float*, unsigned*, int*, float*, float*);
int launch_bnconf_partial_stats_nhwc_v_f32(unsigned, unsigned, unsigned, const float*, unsigned, unsigned, unsigned,
                                           unsigned, int*, float*, float*, unsigned*, int*, float*, float*);
int launch_bnconf_bwd_partial_nchw_s_f32(unsigned, unsigned, unsigned, const float*, const float*, unsigned, unsigned,
                                         unsigned, unsigned, const float*, float*, float*, unsigned*, float*, float*);
int launch_bnconf_bwd_partial_nhwc_v_f32(unsigned, unsigned, unsigned, const float*, const float*, unsigned, unsigned,
                                         unsigned, unsigned, const float*, float*, float*, unsigned*, float*, float*);
int launch_bnconf_merge_stats(unsigned, unsigned, unsigned, const int*, const float*, const float*, unsigned, unsigned,
                              float, float, const float*, int, float*, float*, float*, float*, float*, float*);
int launch_bnconf_bwd_merge(unsigned, unsigned, unsigned, const float*, const float*, const int*, unsigned, unsigned,
                            const float*, const float*, float*, float*, float*, float*, float*);
}

int main() {
    const unsigned N = 3, C = 16, S = 5, splits = 2, W = 2, threads = 64;
    std::vector<float> x(N * C * S), dy(N * C * S);
    for (unsigned i = 0; i < x.size(); ++i) {
        x[i] = 0.25f * float((i * 7) % 13);
        dy[i] = 0.5f * float((i * 5) % 11) - 2.0f;
    }
    std::vector<int> ws_n(C * splits), part_n(W * C);
    std::vector<float> ws_a(C * splits), ws_b(C * splits), part_mean(W * C), part_m2(W * C), part_dy(W * C),
        part_dyxmu(W * C);
    std::vector<unsigned> counters(C, 0u);
    int failed = 0;
    // replica 0: nchw, one channel per group; replica 1: nhwc, 4 lanes of 4-channel packs in one group
    failed |= launch_bnconf_partial_stats_nchw_s_f32(splits, C, threads, x.data(), N, C, S, 1, ws_n.data(), ws_a.data(),
                                                     ws_b.data(), counters.data(), part_n.data(), part_mean.data(),
                                                     part_m2.data());
    failed |= launch_bnconf_partial_stats_nhwc_v_f32(splits, 1, threads, x.data(), N, C, S, 4, ws_n.data(), ws_a.data(),
                                                     ws_b.data(), counters.data(), part_n.data() + C,
                                                     part_mean.data() + C, part_m2.data() + C);
    std::vector<float> gamma(C, 1.5f), rmean(C, 0.0f), rvar(C, 1.0f), mean(C), var(C), invstd(C), scale(C);
    failed |= launch_bnconf_merge_stats(1, 1, 32, part_n.data(), part_mean.data(), part_m2.data(), W, C, 1e-5f, 0.1f,
                                        gamma.data(), 1, rmean.data(), rvar.data(), mean.data(), var.data(),
                                        invstd.data(), scale.data());
    failed |= launch_bnconf_bwd_partial_nchw_s_f32(splits, C, threads, x.data(), dy.data(), N, C, S, 1, mean.data(),
                                                   ws_a.data(), ws_b.data(), counters.data(), part_dy.data(),
                                                   part_dyxmu.data());
    failed |= launch_bnconf_bwd_partial_nhwc_v_f32(splits, 1, threads, x.data(), dy.data(), N, C, S, 4, mean.data(),
                                                   ws_a.data(), ws_b.data(), counters.data(), part_dy.data() + C,
                                                   part_dyxmu.data() + C);
    std::vector<float> dgamma(C), dbeta(C), coef_a(C), coef_b(C), coef_k(C);
    failed |= launch_bnconf_bwd_merge(1, 1, 32, part_dy.data(), part_dyxmu.data(), part_n.data(), W, C, invstd.data(),
                                      gamma.data(), dgamma.data(), dbeta.data(), coef_a.data(), coef_b.data(),
                                      coef_k.data());
    for (unsigned c = 0; c < C; ++c) {
        const bool ok = part_n[c] == int(N * S) && part_n[C + c] == int(N * S) && counters[c] == 0u &&
                        std::isfinite(mean[c]) && var[c] >= 0.0f && std::isfinite(dgamma[c]) &&
                        std::fabs(dbeta[c] - (part_dy[c] + part_dy[C + c])) <= 1e-4f * (1.0f + std::fabs(dbeta[c]));
        if (!ok) {
            std::fprintf(stderr, "replicas_tsan_driver: channel %u is wrong\n", c);
            failed = 1;
        }
    }
    return failed;
}
