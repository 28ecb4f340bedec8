"""Compile gates for the CUDA kernels (run wherever nvcc is installed; no GPU needed).

Each .cu (bnconf's batch-norm kernels, adapters/cuda/batchnorm.cu, and the test kernels of the CPU execution
model) is compiled for sm_90 and assembled with `ptxas -v`: no kernel may spill registers, every kernel stays
within REGISTER_BUDGET registers per thread, and the PTX holds no float64 arithmetic (every statistic and
accumulator is float32 by design; a stray double literal or an int-to-double promotion shows up here).
Positive controls check that the gates can fail.
"""

import functools
from pathlib import Path

import pytest

from bnconf.adapters import cuda_build

pytestmark = pytest.mark.skipif(not cuda_build.nvcc_available(), reason="nvcc is not installed: no compile gates")

ARCH = "sm_90"
# Registers per thread. The kernels run blocks of 256 threads (bnk::MAX_THREADS). An H100 SM has 65536
# registers and holds up to 2048 threads: at <= 64 registers four 256-thread blocks (1024 threads, 50%
# occupancy) stay resident; with 64 bytes of loads in flight per thread that is 64 KB per SM, about 3.5x what
# Little's law asks to keep HBM3 busy (3.35 TB/s x ~0.7 us latency / 132 SMs ~ 18 KB). 64 is also the most
# with which a 1024-thread block can launch at all (65536 / 1024). At 72-80 only three blocks fit (37.5%).
REGISTER_BUDGET = 64

BATCHNORM_CU = cuda_build.CUDA_DIR / "batchnorm.cu"
TEST_KERNELS = sorted((Path(__file__).parent / "cuda_kernels").glob("*.cu"))
SOURCES = ([BATCHNORM_CU] if BATCHNORM_CU.exists() else []) + TEST_KERNELS


@functools.cache
def report(path: Path) -> cuda_build.CompileReport:
    return cuda_build.nvcc_compile_report(path, ARCH)


def _ids(paths):
    return [p.name for p in paths]


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_every_kernel_is_reported(source):
    """The gates below see every entry point of the PTX (a parse failure would make them vacuous)."""
    r = report(source)
    entries = {line.split("(")[0].split()[-1] for line in r.ptx.splitlines() if ".entry" in line}
    assert entries, f"no kernels in the PTX of {source.name}"
    assert entries <= set(r.kernels), f"ptxas -v reported nothing for {sorted(entries - set(r.kernels))}"


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_no_register_spills(source):
    spilling = {k.name: (k.spill_stores, k.spill_loads) for k in report(source).kernels.values()
                if k.spill_stores or k.spill_loads}
    assert not spilling, f"{source.name}: kernels spill (bytes stored, loaded): {spilling}"


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_registers_within_budget(source):
    over = {k.name: k.registers for k in report(source).kernels.values() if k.registers > REGISTER_BUDGET}
    assert not over, f"{source.name}: more than {REGISTER_BUDGET} registers per thread: {dict(sorted(over.items()))}"


@pytest.mark.parametrize("source", SOURCES, ids=_ids(SOURCES))
def test_no_float64_arithmetic(source):
    found = cuda_build.ptx_float64_instructions(report(source).ptx)
    assert not found, f"{source.name}: float64 instructions in the PTX: {found[:10]}"


# ------------------------------------------------------------------------------------ positive controls
def test_the_float64_gate_finds_a_double_literal(tmp_path):
    cu = tmp_path / "promotes.cu"
    cu.write_text('extern "C" __global__ void k(float* y) { y[threadIdx.x] = y[threadIdx.x] * 1.1; }\n')
    found = cuda_build.ptx_float64_instructions(cuda_build.nvcc_compile_report(cu, ARCH).ptx)
    assert any(i.startswith("mul.") for i in found) and any(i.startswith("cvt.") for i in found), found


def test_the_spill_gate_sees_spills(tmp_path):
    cu = tmp_path / "spills.cu"
    cu.write_text('extern "C" __global__ void k(float* y) {\n'
                  '  float v[48];\n'
                  '  #pragma unroll\n  for (int i = 0; i < 48; ++i) v[i] = y[i * 1024 + threadIdx.x];\n'
                  '  float s = 0.f;\n'
                  '  #pragma unroll\n  for (int i = 0; i < 48; ++i) s += v[i] * v[47 - i] + v[(i * 7) % 48];\n'
                  '  y[threadIdx.x] = s; }\n')
    kernel = cuda_build.nvcc_compile_report(cu, ARCH, ptxas_flags=["--maxrregcount=16"]).kernels["k"]
    assert kernel.spill_stores > 0 and kernel.spill_loads > 0, kernel


def test_ptxas_log_parsing():
    log = ("ptxas info    : Compiling entry function 'bnconf_x' for 'sm_90'\n"
           "ptxas info    : Function properties for bnconf_x\n"
           "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 72 registers, used 1 barriers, 3076 bytes smem, 400 bytes cmem[0]\n")
    (k,) = cuda_build.parse_ptxas_log(log).values()
    assert (k.name, k.registers, k.spill_stores, k.spill_loads, k.stack_frame, k.shared_bytes) == \
        ("bnconf_x", 72, 4, 12, 8, 3076)


def test_float64_detector_ignores_data_movement():
    ptx = "\tld.param.f64 \t%fd1, [p];\n\tmov.f64 %fd2, %fd1;\n\tst.global.f64 [a], %fd2;\n\tadd.f32 %f1, %f2, %f3;\n"
    assert cuda_build.ptx_float64_instructions(ptx) == []
    assert cuda_build.ptx_float64_instructions("\t@%p1 fma.rn.f64 %fd3, %fd1, %fd2, %fd2;\n\tcvt.rn.f32.f64 %f1, %fd3;\n") \
        == ["@%p1 fma.rn.f64 %fd3, %fd1, %fd2, %fd2;", "cvt.rn.f32.f64 %f1, %fd3;"]
