// ThreadSanitizer driver for the batch-norm kernels (adapters/cuda/batchnorm.cu through batchnorm_cpu.cpp):
// one small launch of every kernel of one layout (argument "nchw" or "nhwc") for float32, float16 and
// bfloat16 and both load widths: training forward (stats with a two-block last-block merge, apply), training
// backward (bwd_reduce, dx), eval (eval_prep, bwd_reduce and dx with train = 0). Exit status 0 when every
// launch was accepted and the saved means match a direct computation; races go to stderr through TSan.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda_on_cpu.h"

#define DECLARE(T, TN, LN, VN)                                                                                   \
    extern "C" int launch_bnconf_stats_##LN##_##VN##_##TN(unsigned, unsigned, unsigned, const T*, unsigned,     \
        unsigned, unsigned, unsigned, float, float, const float*, int, float*, float*, int*, float*, float*,     \
        unsigned*, float*, float*, float*);                                                                      \
    extern "C" int launch_bnconf_apply_##LN##_##VN##_##TN(unsigned, unsigned, unsigned, const T*, T*, unsigned,  \
        unsigned, unsigned, unsigned, const float*, const float*, const float*);                                 \
    extern "C" int launch_bnconf_bwd_reduce_##LN##_##VN##_##TN(unsigned, unsigned, unsigned, const T*, const T*, \
        unsigned, unsigned, unsigned, unsigned, const float*, const float*, const float*, int, float*, float*,   \
        unsigned*, float*, float*, float*, float*, float*);                                                      \
    extern "C" int launch_bnconf_dx_##LN##_##VN##_##TN(unsigned, unsigned, unsigned, const T*, const T*, T*,     \
        unsigned, unsigned, unsigned, unsigned, int, const float*, const float*, const float*, const float*);
#define DECLARE_DTYPE(T, TN) DECLARE(T, TN, nchw, v) DECLARE(T, TN, nchw, s) DECLARE(T, TN, nhwc, v) DECLARE(T, TN, nhwc, s)
DECLARE_DTYPE(float, f32)
DECLARE_DTYPE(__half, f16)
DECLARE_DTYPE(__nv_bfloat16, bf16)
extern "C" int launch_bnconf_eval_prep(unsigned, unsigned, unsigned, const float*, const float*, float, unsigned,
                                       float*, float*);

static int failures = 0;
static void expect(bool ok, const std::string& what) {
    if (!ok) {
        std::fprintf(stderr, "batchnorm_tsan_driver: %s\n", what.c_str());
        ++failures;
    }
}

// One layout x dtype x load width: the four kernels' launchers, as declared above.
template <class T, class SK, class AK, class BK, class DK>
void run(SK sk, AK ak, BK bk, DK dk, bool nhwc, unsigned vec, const char* label) {
    const unsigned N = 3, S = nhwc ? 5 : 16, C = nhwc ? 16 : 2, threads = 64, splits = 2;
    const unsigned packs = C / vec;
    unsigned lanes = 1, groups = C;
    if (nhwc) {
        lanes = 1;
        while (lanes < packs && lanes < 32) lanes *= 2;
        groups = (packs + lanes - 1) / lanes;
    }
    const unsigned total = N * C * S, parts = C * splits;
    std::vector<T> x(total), dy(total), out(total);
    std::vector<double> sum(C, 0.0);
    for (unsigned i = 0; i < total; ++i) {
        const unsigned c = nhwc ? i % C : (i / S) % C;
        const float v = 0.25f * float((i * 7) % 13) + float(c);
        x[i] = T(v);
        dy[i] = T(0.5f * float((i * 5) % 11) - 2.0f);
        sum[c] += double(float(x[i]));
    }
    std::vector<float> gamma(C, 1.5f), beta(C, 0.25f), rmean(C, 0.0f), rvar(C, 1.0f), mean(C), invstd(C), scale(C),
        ws_mean(parts), ws_m2(parts), ws_dy(parts), ws_dyxmu(parts), dgamma(C), dbeta(C), ca(C), cb(C), ck(C);
    std::vector<int> ws_n(parts);
    std::vector<unsigned> counters(groups, 0u);
    const std::string name = std::string(label);
    expect(sk(splits, groups, threads, x.data(), N, C, S, lanes, 1e-5f, 0.1f, gamma.data(), 1, rmean.data(),
              rvar.data(), ws_n.data(), ws_mean.data(), ws_m2.data(), counters.data(), mean.data(), invstd.data(),
              scale.data()) == 0, name + " stats refused");
    for (unsigned c = 0; c < C; ++c)
        expect(std::fabs(mean[c] - sum[c] / (N * S)) < 1e-3, name + " stats: wrong mean of channel " + std::to_string(c));
    for (unsigned g = 0; g < groups; ++g) expect(counters[g] == 0, name + " stats: counter not reset");
    expect(ak(splits, groups, threads, x.data(), out.data(), N, C, S, lanes, mean.data(), scale.data(), beta.data()) == 0,
           name + " apply refused");
    for (int train = 1; train >= 0; --train) {
        if (!train)
            expect(launch_bnconf_eval_prep(1, 1, threads, rvar.data(), gamma.data(), 1e-5f, C, invstd.data(),
                                           scale.data()) == 0, name + " eval_prep refused");
        expect(bk(splits, groups, threads, x.data(), dy.data(), N, C, S, lanes, mean.data(), invstd.data(), gamma.data(),
                  train, ws_dy.data(), ws_dyxmu.data(), counters.data(), dgamma.data(), dbeta.data(), ca.data(), cb.data(),
                  ck.data()) == 0, name + " bwd_reduce refused");
        expect(dk(splits, groups, threads, x.data(), dy.data(), out.data(), N, C, S, lanes, train, mean.data(), ca.data(),
                  cb.data(), ck.data()) == 0, name + " dx refused");
        for (unsigned i = 0; i < total; ++i) expect(std::isfinite(float(out[i])), name + " dx: not finite");
    }
}

#define RUN(T, TN, LN, VN, NHWC, VEC)                                                                         \
    run<T>(launch_bnconf_stats_##LN##_##VN##_##TN, launch_bnconf_apply_##LN##_##VN##_##TN,                       \
           launch_bnconf_bwd_reduce_##LN##_##VN##_##TN, launch_bnconf_dx_##LN##_##VN##_##TN, NHWC, VEC,          \
           #LN "_" #VN "_" #TN)

int main(int argc, char** argv) {
    const std::string layout = argc > 1 ? argv[1] : "nchw";
    if (layout == "nchw") {
        RUN(float, f32, nchw, v, false, 4);
        RUN(float, f32, nchw, s, false, 1);
        RUN(__half, f16, nchw, v, false, 8);
        RUN(__half, f16, nchw, s, false, 1);
        RUN(__nv_bfloat16, bf16, nchw, v, false, 8);
        RUN(__nv_bfloat16, bf16, nchw, s, false, 1);
    } else {
        RUN(float, f32, nhwc, v, true, 4);
        RUN(float, f32, nhwc, s, true, 1);
        RUN(__half, f16, nhwc, v, true, 8);
        RUN(__half, f16, nhwc, s, true, 1);
        RUN(__nv_bfloat16, bf16, nhwc, v, true, 8);
        RUN(__nv_bfloat16, bf16, nhwc, s, true, 1);
    }
    return failures == 0 ? 0 : 1;
}
