"""The record types: `KnownDiscrepancy` (a backend computes something other than its declared semantics) and
`EdgeRecord` (a backend does something other than the spec's edge cases require), and `matches`, the `*`
wildcard both match names with.

Plain data with the predicates that say what a record covers; below both the recorded data
(conformance/known/) and the code that applies it (discrepancies.py, edge.py), so any of them, or a user's
own records, can import it first. Imports only spec/.
"""

from dataclasses import dataclass, field
import re
from typing import Callable, Protocol

import numpy as np

from ..spec import Convention, Inputs, Mode, Precision


def matches(name: str, pattern: str) -> bool:
    """`pattern` with `*` as the only wildcard: backend names carry literal brackets ("...[channels_last]")."""
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), name) is not None


@dataclass(frozen=True)
class KnownDiscrepancy:
    """A recorded, explained difference between a backend and its declared semantics.

    It says exactly which cases it covers (backend name pattern, dtypes, devices, modes, and a predicate on the
    inputs) and what the backend does instead, as a model the outputs must then conform to: another `Precision`
    (the arithmetic it really uses there), another `Convention`, or adjusted inputs. A covered case is still
    checked, against the recorded behaviour, so a framework release that changes it fails and the entry gets
    updated; an entry that no covered case needed is reported as stale.
    """

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
    unchecked: Callable[[Inputs], np.ndarray] | None = field(default=None, repr=False)

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


class Outcome(Protocol):
    """What an `EdgeRecord` reads of an edge-battery outcome (conformance/edge.py's `EdgeOutcome`)."""

    backend: str
    case: str
    mode: str  # a `Mode` value
    dtype: str
    outcome: str  # the outcome's description


@dataclass(frozen=True)
class EdgeRecord:
    """A recorded edge behaviour: where `backends` (`*` wildcard) does something other than the spec says."""

    id: str
    backends: str
    case: str  # an edge case id, `*` matching any run of characters
    outcome: str | Callable[[str], bool]  # the outcome description, `*` matching any run of characters; or a predicate
    explanation: str
    evidence: str  # framework source file and line of the installed version, or a minimal input and what it returned
    modes: tuple[Mode, ...] = ()  # empty: any
    dtypes: tuple[str, ...] = ()

    def covers(self, o: Outcome) -> bool:
        """The outcome is one this entry speaks about: its backend, case, mode and dtype."""
        return (matches(o.backend, self.backends) and matches(o.case, self.case)
                and (not self.modes or o.mode in {m.value for m in self.modes})
                and (not self.dtypes or o.dtype in self.dtypes))

    def matches(self, o: Outcome) -> bool:
        """The entry covers the outcome and records what it says."""
        described = self.outcome(o.outcome) if callable(self.outcome) else matches(o.outcome, self.outcome)
        return self.covers(o) and described


__all__ = ["EdgeRecord", "KnownDiscrepancy", "Outcome", "matches"]
