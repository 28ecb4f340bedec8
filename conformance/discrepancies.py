"""Known discrepancies: recorded, explained differences between a backend and its declared semantics.

An entry says exactly which cases it covers (backend name pattern, dtypes, devices, modes, and a predicate
on the inputs) and what the backend does instead, as a model the outputs must then conform to: another
`Precision` (the arithmetic it really uses there) or another `Convention`. A covered case is therefore
still checked, against the recorded behaviour, so a framework release that changes it fails the test and
the entry gets updated. An entry that no covered case actually needed is reported as stale.
"""

from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Callable

from ..spec import Convention, Inputs, Mode, Precision, precision_for

TRAINING = (Mode.TRAIN_FORWARD, Mode.TRAIN_BACKWARD)


@dataclass(frozen=True)
class KnownDiscrepancy:
    id: str
    backends: str  # fnmatch pattern on the backend's name
    quantities: tuple[str, ...]  # the quantities that differ from the declared semantics
    explanation: str
    evidence: str  # the source line that explains it, an upstream issue, a minimal input
    dtypes: tuple[str, ...] = ()  # empty: any
    devices: tuple[str, ...] = ()
    modes: tuple[Mode, ...] = ()
    when: Callable[[Inputs], bool] = field(default=lambda inputs: True, repr=False)
    precision: Callable[[str], Precision] | None = field(default=None, repr=False)
    convention: Convention | None = None

    def covers(self, backend_name: str, mode: Mode, dtype: str, device: str, inputs: Inputs) -> bool:
        return (
            fnmatch(backend_name, self.backends)
            and (not self.dtypes or dtype in self.dtypes)
            and (not self.devices or device in self.devices)
            and (not self.modes or mode in self.modes)
            and self.when(inputs)
        )

    def recorded_precision(self, declared: Precision) -> Precision:
        return self.precision(declared.dtype) if self.precision else declared

    def recorded_convention(self, declared: Convention) -> Convention:
        return self.convention or declared


REGISTRY: tuple[KnownDiscrepancy, ...] = (
    KnownDiscrepancy(
        id="torch-cpu-half-without-float32-tensors",
        backends="torch.nn.*",
        dtypes=("float16", "bfloat16"),
        devices=("cpu",),
        modes=TRAINING,
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


def covering(registry, backend_name: str, mode: Mode, dtype: str, device: str, inputs: Inputs):
    """The first entry that covers the case, or None."""
    return next((d for d in registry if d.covers(backend_name, mode, dtype, device, inputs)), None)
