"""The record types: `KnownDiscrepancy` (a backend computes something other than its declared semantics) and
`EdgeRecord` (a backend does something other than the spec's edge cases require), and `matches`, the `*`
wildcard both match names with.

Plain data with the predicates that say what a record covers, and `KnownDiscrepancy.apply`, the one rule
that turns a covered case into the recorded behaviour (used by the battery, the edge cases, the
cross-framework table and the state machine alike); below both the recorded data (conformance/known/) and
the code that looks records up (discrepancies.py, edge.py), so any of them, or a user's own records, can
import it first. Imports only spec/.
"""

from dataclasses import dataclass, field, replace
import re
from typing import Callable, Protocol

import numpy as np

from ..spec import Comparison, Convention, Expected, Inputs, Mode, Precision, RunningStats, expected, judge
from ..spec.oracle import channel_axis


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

    def checked_channels(self, inputs: Inputs) -> np.ndarray | None:
        """Per channel of `inputs`, whether the record's claim is checked there (None: every channel)."""
        if self.unchecked is None:
            return None
        return ~np.asarray(self.unchecked(inputs), dtype=bool).reshape(-1)

    def apply(self, inputs: Inputs, observed: dict, convention: Convention, precision: Precision) -> "RecordedCase":
        """The case under the recorded behaviour: the adjusted inputs, recorded convention and precision, and the
        channels the record makes a claim about (`unchecked` is read on the inputs as given). The one place a
        record is applied: `RecordedCase.judge` checks the claimed channels, `RecordedCase.expected` gives the
        oracle's values with the others marked as making no claim."""
        recorded_inputs, recorded_convention, recorded_precision = self.recorded_model(inputs, convention, precision)
        return RecordedCase(recorded_inputs, dict(observed), recorded_convention, recorded_precision,
                            self.checked_channels(inputs))


@dataclass(frozen=True)
class RecordedCase:
    """A case as a record says the backend computes it (`KnownDiscrepancy.apply`), or as declared (`declared`).

    `checked` (a boolean per channel, None: every channel) is where the record makes a claim: `judge` compares
    only those channels (the others are dropped, as if the case had only the checked channels), `expected`
    marks the others ill-conditioned (no bound, so no claim) for callers that need every channel."""

    inputs: Inputs
    observed: dict
    convention: Convention
    precision: Precision
    checked: np.ndarray | None = None

    @classmethod
    def declared(cls, inputs: Inputs, observed: dict, convention: Convention, precision: Precision) -> "RecordedCase":
        """The case under the declared semantics (no record covers it): every channel checked."""
        return cls(inputs, dict(observed), convention, precision)

    @property
    def claims_nothing(self) -> bool:
        """The record leaves every channel of this case unchecked."""
        return self.checked is not None and not self.checked.any()

    def judge(self, mode: Mode) -> dict[str, Comparison]:
        """`spec.judge` on the checked channels ({} when the record claims nothing about the case)."""
        if self.claims_nothing:
            return {}
        inputs, observed = self.inputs, self.observed
        if self.checked is not None:
            inputs, observed = only_channels(inputs, observed, self.checked)
        return judge(mode, observed, inputs, self.convention, self.precision)

    def expected(self, mode: Mode) -> dict[str, Expected]:
        """`spec.expected` over every channel, the unchecked ones marked ill-conditioned: no claim there."""
        with np.errstate(all="ignore"):
            values = expected(mode, self.inputs, self.convention, self.precision)
        if self.checked is None:
            return values
        out = {}
        for q, e in values.items():
            skip = along_channels(~self.checked, e.value, self.inputs)
            out[q] = replace(e, ill=np.asarray(e.ill, bool) | skip, ill_one_pass=np.asarray(e.ill_one_pass, bool) | skip)
        return out

    def merged_state(self, values: dict[str, Expected], observed: dict) -> dict[str, np.ndarray]:
        """Per quantity, the oracle's value on the checked channels and the observed one on the others (a state
        machine carries on from the backend's statistics where the record claims nothing)."""
        out = {}
        for q, e in values.items():
            if self.checked is None or q not in observed or observed[q] is None:
                out[q] = e.value
            else:
                keep = along_channels(self.checked, e.value, self.inputs)
                out[q] = np.where(keep, e.value, np.asarray(observed[q], dtype=np.float64))
        return out


def along_channels(per_channel: np.ndarray, like, inputs: Inputs) -> np.ndarray:
    """A per-channel mask broadcast to a quantity's shape: x-shaped ones along the channel axis, per-channel
    ones as they are."""
    per_channel = np.asarray(per_channel, dtype=bool)
    if np.ndim(like) != np.ndim(inputs.x):
        return np.broadcast_to(per_channel, np.shape(like))
    shape = [1] * np.ndim(inputs.x)
    shape[channel_axis(np.ndim(inputs.x), inputs.axis)] = -1
    return np.broadcast_to(per_channel.reshape(shape), np.shape(like))


def only_channels(inputs: Inputs, observed: dict, keep: np.ndarray) -> tuple[Inputs, dict]:
    """`inputs` and `observed` restricted to the channels where `keep` is true (x-shaped quantities along
    the channel axis, per-channel ones by index)."""
    ndim = inputs.x.ndim
    axis = channel_axis(ndim, inputs.axis)
    per_channel = lambda a: None if a is None else np.asarray(a)[keep]  # noqa: E731
    per_element = lambda a: None if a is None else np.compress(keep, a, axis=axis)  # noqa: E731
    stats = lambda r: None if r is None else RunningStats(per_channel(r.mean), per_channel(r.var), r.count)  # noqa: E731
    restricted = replace(
        inputs, x=per_element(inputs.x), dy=per_element(inputs.dy), gamma=per_channel(inputs.gamma),
        beta=per_channel(inputs.beta), running=stats(inputs.running), running_error=stats(inputs.running_error),
    )
    return restricted, {q: per_element(v) if np.ndim(v) == ndim else per_channel(v) for q, v in observed.items()}


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


__all__ = ["EdgeRecord", "KnownDiscrepancy", "Outcome", "RecordedCase", "along_channels", "matches", "only_channels"]
