"""Known discrepancies of the PyTorch adapters (see conformance/records.py for what an entry means)."""

from ...spec import precision_for
from ..records import KnownDiscrepancy

ENTRIES: tuple[KnownDiscrepancy, ...] = (
    # first match wins: the more specific entry comes first
    KnownDiscrepancy(
        id="torch-cpu-half-parameters",
        backends="torch.nn.BatchNorm*[half parameters]",
        dtypes=("float16", "bfloat16"),
        devices=("cpu",),
        quantities=("y", "running_mean", "running_var", "dx", "dgamma", "dbeta"),
        precision=lambda dtype: precision_for(dtype, compute=dtype, accumulate="float32", stats=dtype),
        explanation=(
            "After module.half() (or .bfloat16()) every tensor is half precision, so PyTorch's CPU kernel "
            "takes its non-mixed path in every mode: the saved (or running) mean and invstd are half tensors, "
            "and y, the running update, dx and the parameter gradients are formed from them in half arithmetic with float32 sums. "
            "Errors reach ~50-250x the float32-arithmetic bound and stay within the half-arithmetic one."
        ),
        evidence=(
            "pytorch v2.13.0 aten/src/ATen/native/Normalization.cpp: `mixed_type = !std::is_same<scalar_t, "
            "param_t>::value` selects the float32 statistics only for half input with float parameters "
            "(batch_norm_cpu_update_stats_template, batch_norm_cpu_transform_input_template). Minimal: "
            "BatchNorm2d(3).bfloat16().eval() on x of ones with running_var 1: y = 1.0078 where 0.99974 is "
            "expected (bound 0.0039)."
        ),
    ),
    KnownDiscrepancy(
        id="torch-cpu-half-without-float32-tensors",
        backends="torch.nn.*",
        dtypes=("float16", "bfloat16"),
        devices=("cpu",),
        # any mode that uses batch statistics: training, and eval of a module built untracked
        when=lambda i: i.gamma is None and i.running is None,
        quantities=("y", "dx"),
        precision=lambda dtype: precision_for(dtype, compute=dtype, accumulate="float32", stats=dtype),
        explanation=(
            "PyTorch's CPU kernel computes in float32 only when some tensor besides the input is float32 "
            "(its 'mixed type' path). With half-precision input and neither affine parameters nor running "
            "statistics, the saved mean and invstd are half-precision tensors and the output and gradient "
            "are formed from them: y and dx are up to ~150x outside the float32-arithmetic bound, and "
            "within the bound of half-precision arithmetic with float32 sums."
        ),
        evidence=(
            "pytorch v2.13.0 aten/src/ATen/native/Normalization.cpp, batch_norm_cpu_update_stats_template: "
            "`constexpr bool mixed_type = !std::is_same<scalar_t, param_t>::value; const auto dtype = "
            "mixed_type ? kFloat : input.scalar_type(); Tensor save_mean = ... dtype(dtype)`. Related: "
            "pytorch/pytorch#140112 (bf16 CPU gives 1.0078 for a correctly rounded 1.0). Minimal: "
            "F.batch_norm(x, None, None, None, None, True, 0.1, 1e-5) on bfloat16 x = [[1.3047], [0.8789]]."
        ),
    ),
)
