"""Known discrepancies: recorded, explained differences between a backend and its declared semantics.

An entry says exactly which cases it covers (backend name pattern, dtypes, devices, modes, and a predicate
on the inputs) and what the backend does instead, as a model the outputs must then conform to: another
`Precision` (the arithmetic it really uses there) or another `Convention`. A covered case is therefore
still checked, against the recorded behaviour, so a framework release that changes it fails the test and
the entry gets updated. An entry that no covered case actually needed is reported as stale.
"""

from dataclasses import dataclass, field
import re
from typing import Callable

from ..spec import Convention, Inputs, Mode, Precision


def matches(name: str, pattern: str) -> bool:
    """`pattern` with `*` as the only wildcard: backend names carry literal brackets ("...[channels_last]")."""
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), name) is not None


@dataclass(frozen=True)
class KnownDiscrepancy:
    id: str
    backends: str  # the backend's name, `*` matching any run of characters (brackets are literal)
    quantities: tuple[str, ...]  # the quantities that differ from the declared semantics
    explanation: str
    evidence: str  # the source line that explains it, an upstream issue, a minimal input
    dtypes: tuple[str, ...] = ()  # empty: any
    devices: tuple[str, ...] = ()
    modes: tuple[Mode, ...] = ()
    when: Callable[[Inputs], bool] = field(default=lambda inputs: True, repr=False)
    precision: Callable[[str], Precision] | None = field(default=None, repr=False)
    convention: Convention | None = None
    # the recorded behaviour is the declared semantics on adjusted inputs (e.g. another eps, or a momentum
    # that leaves the running statistics where they were); None: the inputs as given
    adjust: Callable[[Inputs], Inputs] | None = field(default=None, repr=False)
    # channels (a boolean per channel) the record makes no claim about, e.g. NaN from a variance computed
    # negative: the recorded behaviour is checked on the other channels; None: every channel is checked
    unchecked: Callable[[Inputs], "np.ndarray"] | None = field(default=None, repr=False)

    def covers(self, backend_name: str, mode: Mode, dtype: str, device: str, inputs: Inputs) -> bool:
        return (
            matches(backend_name, self.backends)
            and (not self.dtypes or dtype in self.dtypes)
            and (not self.devices or device in self.devices)
            and (not self.modes or mode in self.modes)
            and self.when(inputs)
        )

    def recorded_precision(self, declared: Precision) -> Precision:
        return self.precision(declared.dtype) if self.precision else declared

    def recorded_convention(self, declared: Convention) -> Convention:
        return self.convention or declared

    def recorded_inputs(self, inputs: Inputs) -> Inputs:
        return self.adjust(inputs) if self.adjust else inputs

    def recorded_model(self, inputs: Inputs, convention: Convention, precision: Precision):
        """The recorded behaviour as the oracle's arguments: (adjusted inputs, convention, precision)."""
        return self.recorded_inputs(inputs), self.recorded_convention(convention), self.recorded_precision(precision)


def _registry() -> tuple["KnownDiscrepancy", ...]:
    """Every family's entries: one module per framework under conformance/known/ (data only, no framework import)."""
    from .known import jax, keras, tensorflow, torch

    return torch.ENTRIES + tensorflow.ENTRIES + keras.ENTRIES + jax.ENTRIES


def covering(registry, backend_name: str, mode: Mode, dtype: str, device: str, inputs: Inputs):
    """The first entry that covers the case, or None."""
    return next((d for d in registry if d.covers(backend_name, mode, dtype, device, inputs)), None)


REGISTRY: tuple[KnownDiscrepancy, ...] = _registry()
