"""Benchmark bnconf's CUDA batch-norm kernel against PyTorch's native batch norm and a device-to-device copy.

A script, not a test; it needs a CUDA GPU with CuPy (and PyTorch built with CUDA for the comparison):

    python benchmarks/bench_cuda_kernel.py [--json OUT] [--iters 20] [--layout NCHW|NHWC]

For the shapes (256, 64, 56, 56) and (64, 256, 28, 28), float32 and float16 inputs (float32 parameters and
statistics), it times three passes: training forward (statistics, running-statistics update, y), eval forward
and training backward (dx, dgamma, dbeta from the saved statistics), for bnconf's kernel
(adapters/cuda_kernel.py: BatchNormLaunches on CuPy, NVRTC) and torch.nn.functional.batch_norm on cuda, and a
cudaMemcpy device-to-device copy of the same tensor in the same run. Each time is the median of --iters runs
timed with CUDA events, the L2 cache flushed (a 256 MiB write) before each run.

Achieved bandwidth = minimum bytes moved / time, the minimum counted in whole tensors of the input's size:
training forward 3 (read x for the statistics, read it again, write y), eval forward 2, backward 5 (read x and
dy for the sums, read both again, write dx), copy 2 (read, write). The target (issue 6): at least 90% of the
copy's bandwidth on these shapes and faster than PyTorch.
"""

import argparse
import json
import statistics
import sys

SHAPES = ((256, 64, 56, 56), (64, 256, 28, 28))
DTYPES = ("float32", "float16")
TENSORS_MOVED = {"train_forward": 3, "eval_forward": 2, "backward": 5, "copy": 2}
EPS, MOMENTUM = 1e-5, 0.1
FLUSH_BYTES = 256 << 20  # more than any GPU's L2


def require_gpu():
    """CuPy with at least one CUDA device, or exit with a message saying what is missing."""
    try:
        import cupy
    except ImportError:
        sys.exit("bench_cuda_kernel: needs CuPy and a CUDA GPU (pip install cupy-cuda13x): cupy is not installed")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver: CUDARuntimeError
        sys.exit(f"bench_cuda_kernel: needs a CUDA GPU: {error}")
    if count < 1:
        sys.exit("bench_cuda_kernel: needs a CUDA GPU: none found")
    return cupy


def median_us(cp, run, iters: int, flush) -> float:
    """Median time of run() in microseconds over `iters` runs, CUDA events around each, L2 flushed before."""
    for _ in range(3):  # warm-up: compilation, allocator, autotuning
        run()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(iters):
        flush()
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) * 1e3)
    return statistics.median(times)


def bnconf_passes(cp, layout: str, dtype: str, x, dy):
    """{pass name: callable} for bnconf's kernel on CuPy arrays x, dy (layout order, storage dtype)."""
    from bnconf.adapters.cuda_kernel import BatchNormLaunches, CudaDevice

    c = x.shape[1] if layout == "NCHW" else x.shape[-1]
    f32 = cp.float32
    gamma, beta = cp.ones(c, f32), cp.zeros(c, f32)
    running_mean, running_var = cp.zeros(c, f32), cp.ones(c, f32)
    device = CudaDevice()
    train = BatchNormLaunches(device, layout, dtype, x, gamma, beta, dy=dy)
    evaluation = BatchNormLaunches(device, layout, dtype, x, gamma, beta)
    train.batch_statistics(EPS, MOMENTUM, running_mean, running_var)  # saved statistics for the backward

    def train_forward():
        train.batch_statistics(EPS, MOMENTUM, running_mean, running_var)
        train.normalize()

    def eval_forward():
        evaluation.running_statistics(EPS, running_mean, running_var)
        evaluation.normalize()

    passes = {"train_forward": train_forward, "eval_forward": eval_forward,
              "backward": lambda: train.gradients(train=True)}
    return passes, train


def torch_passes(torch, layout: str, x, dy):
    """{pass name: callable} for torch.nn.functional.batch_norm on the same memory (through DLPack)."""
    xt, dyt = torch.from_dlpack(x), torch.from_dlpack(dy)
    if layout == "NHWC":  # (N, H, W, C) memory is an NCHW tensor in channels_last format
        xt, dyt = xt.permute(0, 3, 1, 2), dyt.permute(0, 3, 1, 2)
    c = xt.shape[1]
    options = dict(device=xt.device, dtype=torch.float32)
    weight, bias = torch.ones(c, **options, requires_grad=True), torch.zeros(c, **options, requires_grad=True)
    running_mean, running_var = torch.zeros(c, **options), torch.ones(c, **options)
    bn = torch.nn.functional.batch_norm
    xg = xt.detach().requires_grad_(True)
    y = bn(xg, running_mean, running_var, weight, bias, True, MOMENTUM, EPS)

    def train_forward():
        with torch.no_grad():
            bn(xt, running_mean, running_var, weight, bias, True, MOMENTUM, EPS)

    def eval_forward():
        with torch.no_grad():
            bn(xt, running_mean, running_var, weight, bias, False, MOMENTUM, EPS)

    passes = {"train_forward": train_forward, "eval_forward": eval_forward,
              "backward": lambda: torch.autograd.grad(y, (xg, weight, bias), dyt, retain_graph=True)}
    return passes, xt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="OUT", help="also write the results to this JSON file")
    parser.add_argument("--iters", type=int, default=20, help="timed runs per measurement (median; default 20)")
    parser.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW",
                        help="memory layout (NHWC: torch channels_last); default NCHW")
    args = parser.parse_args(argv)
    cp = require_gpu()
    try:
        import torch

        torch = torch if torch.cuda.is_available() else None
    except ImportError:
        torch = None
    if torch is None:
        print("bench_cuda_kernel: PyTorch with CUDA not found: no PyTorch comparison", file=sys.stderr)

    flush_buffer = cp.empty(FLUSH_BYTES, dtype=cp.uint8)
    flush = lambda: flush_buffer.fill(1)  # noqa: E731
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    device_name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    rows = []
    for shape in SHAPES:
        n, c, h, w = shape
        layout_shape = shape if args.layout == "NCHW" else (n, h, w, c)
        for dtype in DTYPES:
            x = (cp.random.standard_normal(layout_shape, dtype=cp.float32) * 2 + 1).astype(dtype)
            dy = cp.random.standard_normal(layout_shape, dtype=cp.float32).astype(dtype)
            out = cp.empty_like(x)
            nbytes = x.nbytes
            copy = lambda: cp.cuda.runtime.memcpyAsync(  # noqa: E731
                out.data.ptr, x.data.ptr, nbytes, cp.cuda.runtime.memcpyDeviceToDevice,
                cp.cuda.get_current_stream().ptr)
            copy_us = median_us(cp, copy, args.iters, flush)
            copy_gbps = TENSORS_MOVED["copy"] * nbytes / copy_us / 1e3
            rows.append(dict(shape=list(shape), layout=args.layout, dtype=dtype, mode="copy", impl="memcpy d2d",
                             time_us=copy_us, gbps=copy_gbps, ratio_to_copy=1.0))
            ours, launches = bnconf_passes(cp, args.layout, dtype, x, dy)
            theirs, xt = torch_passes(torch, args.layout, x, dy) if torch else ({}, None)
            if torch:  # one correctness check per shape and dtype: the training-forward y against PyTorch's
                ours["train_forward"]()
                y_ref = torch.nn.functional.batch_norm(xt, None, None, None, None, True, MOMENTUM, EPS)
                y_ours = torch.from_dlpack(launches.out)
                y_ours = y_ours.permute(0, 3, 1, 2) if args.layout == "NHWC" else y_ours
                print(f"{shape} {dtype}: max |y - torch y| = {(y_ours.float() - y_ref.float()).abs().max().item():.3g}")
            for mode in ("train_forward", "eval_forward", "backward"):
                for impl, passes in (("bnconf", ours), ("torch", theirs)):
                    if mode not in passes:
                        continue
                    t = median_us(cp, passes[mode], args.iters, flush)
                    gbps = TENSORS_MOVED[mode] * nbytes / t / 1e3
                    rows.append(dict(shape=list(shape), layout=args.layout, dtype=dtype, mode=mode, impl=impl,
                                     time_us=t, gbps=gbps, ratio_to_copy=gbps / copy_gbps))

    print(f"\n{device_name}, {args.layout}, median of {args.iters} runs, L2 flushed before each")
    print(f"{'shape':<20} {'dtype':<8} {'mode':<14} {'impl':<12} {'time (us)':>10} {'GB/s':>8} {'vs copy':>8}")
    for r in rows:
        print(f"{str(tuple(r['shape'])):<20} {r['dtype']:<8} {r['mode']:<14} {r['impl']:<12} {r['time_us']:>10.1f} "
              f"{r['gbps']:>8.0f} {r['ratio_to_copy']:>8.1%}")
    by_key = {(tuple(r["shape"]), r["dtype"], r["mode"], r["impl"]): r for r in rows}
    print("\ntarget: >= 90% of the copy's bandwidth and faster than PyTorch")
    for (shape, dtype, mode, impl), r in by_key.items():
        if impl != "bnconf":
            continue
        ref = by_key.get((shape, dtype, mode, "torch"))
        speedup = ref["time_us"] / r["time_us"] if ref else None
        met = r["ratio_to_copy"] >= 0.9 and (speedup is None or speedup > 1)
        r["speedup_vs_torch"] = speedup
        print(f"{str(shape):<20} {dtype:<8} {mode:<14} {r['ratio_to_copy']:>6.1%} of copy, "
              f"{'x%.2f' % speedup if speedup else 'no torch':>8} vs torch: {'met' if met else 'MISSED'}")
    if args.json:
        versions = {"cupy": cp.__version__, "torch": torch.__version__ if torch else None}
        with open(args.json, "w") as f:
            json.dump(dict(device=device_name, layout=args.layout, iters=args.iters, versions=versions,
                           tensors_moved=TENSORS_MOVED, results=rows), f, indent=2)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
