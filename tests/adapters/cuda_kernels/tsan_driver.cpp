// ThreadSanitizer driver: one small launch of each test kernel (argument: a kernel name, or "all").
// Exit status 0 when every result is right; TSan reports races on stderr (exit 66 through TSAN_OPTIONS).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_on_cpu.h"

extern "C" {
void launch_block_sum(const float*, float*, int, int);
void launch_block_index_sum(int*, int, int, int, int);
void launch_early_exit_sum(const float*, float*, int, int, int);
void launch_warp_sums(const float*, float*, int, int);
void launch_warp_allreduce(const int*, int*, int, int);
void launch_warp_ballot(const float*, unsigned*, float, int);
void launch_grid_sum(const float*, float*, unsigned*, float*, int, int);
void launch_atomic_counts(float*, int*, unsigned*, int*, int, int);
void launch_float_to_half_bits(const float*, unsigned short*, int);
void launch_float_to_bfloat16_bits(const float*, unsigned short*, int);
void launch_axpb4(const float*, float*, float, float, int);
void launch_half_scale(const __half*, __half*, float, int);
}

static int failures = 0;
static void expect(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "wrong result: %s\n", what);
        ++failures;
    }
}

int main(int argc, char** argv) {
    const std::string only = argc > 1 ? argv[1] : "all";
    auto want = [&](const char* name) { return only == "all" || only == name; };
    std::vector<float> ones(1024, 1.0f);
    if (want("block_sum")) {
        std::vector<float> sums(2);
        launch_block_sum(ones.data(), sums.data(), 1000, 2);
        expect(sums[0] + sums[1] == 1000.0f, "block_sum");
    }
    if (want("block_index_sum")) {
        std::vector<int> out(4);
        launch_block_index_sum(out.data(), 2, 2, 16, 4);
        expect(out[3] == 63 * 64 / 2, "block_index_sum");
    }
    if (want("early_exit_sum")) {
        std::vector<float> out(2);
        launch_early_exit_sum(ones.data(), out.data(), 40, 2, 64);
        expect(out[0] == 40.0f && out[1] == 40.0f, "early_exit_sum");
    }
    if (want("warp_sums")) {
        std::vector<float> sums(4);
        launch_warp_sums(ones.data(), sums.data(), 128, 64);
        expect(sums[3] == 32.0f, "warp_sums");
    }
    if (want("warp_allreduce")) {
        std::vector<int> x(64, 2), out(64);
        launch_warp_allreduce(x.data(), out.data(), 64, 64);
        expect(out[63] == 64, "warp_allreduce");
    }
    if (want("warp_ballot")) {
        std::vector<unsigned> out(4);
        launch_warp_ballot(ones.data(), out.data(), 0.5f, 128);
        expect(out[3] == 0xffffffffu, "warp_ballot");
    }
    if (want("grid_sum")) {
        std::vector<float> partials(3);
        unsigned counter = 0;
        float out = 0;
        launch_grid_sum(ones.data(), partials.data(), &counter, &out, 1000, 3);
        expect(out == 1000.0f && counter == 0, "grid_sum");
    }
    if (want("atomic_counts")) {
        float f = 0;
        int i = 0, m = 0;
        unsigned u = 0;
        launch_atomic_counts(&f, &i, &u, &m, 2, 64);
        expect(f == 64.0f && i == 127 * 128 / 2 && u == 256 && m == 127, "atomic_counts");
    }
    if (want("conversions")) {
        std::vector<float> x = {1.0f, -2.5f, 65520.0f, 1e-8f};
        std::vector<unsigned short> h(4), b(4);
        launch_float_to_half_bits(x.data(), h.data(), 4);
        launch_float_to_bfloat16_bits(x.data(), b.data(), 4);
        expect(h[0] == 0x3c00 && h[2] == 0x7c00 && b[1] == 0xc020, "conversions");
        std::vector<__half> hx(64, __float2half(3.0f)), hy(64);
        launch_half_scale(hx.data(), hy.data(), 4.0f, 64);
        expect(__half2float(hy[63]) == 1.5f, "half_scale");
    }
    if (want("axpb4")) {
        std::vector<float> y(1024);
        launch_axpb4(ones.data(), y.data(), 2.0f, 1.0f, 256);
        expect(y[1023] == 3.0f, "axpb4");
    }
    return failures == 0 ? 0 : 1;
}
