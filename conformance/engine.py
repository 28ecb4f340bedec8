"""One case through one backend and back to the oracle: the chain the pytest suite and the command line share.

    inputs (spec.Inputs, float64) --prepare--> values the backend's formats can hold
           --request--> backend.run --Outputs--> spec.judge under the backend's convention --> Comparisons
           (and, where a known discrepancy covers the case, under the recorded behaviour too: `assess`)
"""

from dataclasses import dataclass, field, replace

import numpy as np

from ..adapters.protocol import Request, declared_precision
from ..spec import Comparison, Inputs, Mode, Precision, RunningStats, Verdict, judge
from ..spec.error_model import split_layout
from .arrays import round_to
from .discrepancies import covering
from .known import DISCREPANCIES as REGISTRY, discrepancies_for
from .records import KnownDiscrepancy

ACCEPTED = (Verdict.CONFORMS, Verdict.ILL_CONDITIONED)


def prepare(inputs: Inputs, precision: Precision) -> Inputs:
    """x and dy rounded to the input format; gamma, beta and running statistics to the stats format (the
    parameter format of a mixed layout); eps and momentum to the attribute format the precision declares
    (`Precision.attributes`, e.g. float32 for ONNX; exact when None), so that the backend and the oracle see
    the same numbers."""
    as_stats = lambda a: None if a is None else round_to(a, precision.stats).astype("float64")  # noqa: E731
    running = inputs.running
    if running is not None:
        running = RunningStats(as_stats(running.mean), as_stats(running.var), running.count)
    return replace(
        inputs,
        x=round_to(inputs.x, precision.dtype).astype("float64"),
        dy=None if inputs.dy is None else round_to(inputs.dy, precision.dtype).astype("float64"),
        gamma=as_stats(inputs.gamma),
        beta=as_stats(inputs.beta),
        running=running,
        eps=precision.attribute(inputs.eps),
        momentum=precision.attribute(inputs.momentum),
    )


def request(inputs: Inputs, dtype: str, device: str) -> Request:
    """The backend's request, with copies of every array: a backend that writes into its inputs (an
    in-place running update on a shared buffer) must not change what the oracle is given. `dtype` may name a
    mixed layout ("float16/float32"): the request's dtype and param_dtype."""
    copy = lambda a: None if a is None else np.array(a, dtype=np.float64)  # noqa: E731
    r = inputs.running
    dtype, param_dtype = split_layout(dtype)
    return Request(
        x=copy(inputs.x), axis=inputs.axis, eps=inputs.eps, dtype=dtype, device=device, momentum=inputs.momentum,
        param_dtype=param_dtype,
        gamma=copy(inputs.gamma), beta=copy(inputs.beta), running_mean=None if r is None else copy(r.mean),
        running_var=None if r is None else copy(r.var), batches_seen=0 if r is None else r.count, dy=copy(inputs.dy),
    )


@dataclass(frozen=True)
class Assessment:
    """A case's comparisons with the declared semantics and, where a known discrepancy covers it, with the
    recorded behaviour instead."""

    declared: dict[str, Comparison]
    discrepancy: KnownDiscrepancy | None = None
    recorded: dict[str, Comparison] | None = None
    wrote_into: str = ""  # what the backend wrote into among its inputs ("" when nothing)
    inputs: Inputs | None = field(default=None, repr=False, compare=False)  # as prepared for the backend
    observed: dict = field(default_factory=dict, repr=False, compare=False)  # its outputs, float64

    def problems(self) -> dict[str, Comparison]:
        """Quantities that match neither the declared semantics nor, where one applies, the record."""
        bad = {q: c for q, c in self.declared.items() if c.verdict not in ACCEPTED}
        if self.discrepancy is not None:
            bad = {q: c for q, c in bad.items() if q not in self.discrepancy.quantities}
            bad.update({q: c for q, c in self.recorded.items() if q in self.discrepancy.quantities and c.verdict not in ACCEPTED})
        return bad

    @property
    def discrepancy_seen(self) -> bool:
        """The declared semantics failed where the entry says they would: the record was needed."""
        return self.discrepancy is not None and any(
            self.declared[q].verdict not in ACCEPTED for q in self.discrepancy.quantities if q in self.declared
        )


def assess(backend, mode: Mode, inputs: Inputs, dtype: str, device: str, registry=None) -> Assessment:
    """Run `mode` once and compare with the declared semantics and, if covered, the recorded discrepancy
    (`registry` None: the records that apply to the backend, `known.discrepancies_for`)."""
    precision = declared_precision(backend, dtype, device)
    registry = discrepancies_for(backend) if registry is None else registry
    entry = covering(registry, backend.name, mode, dtype, device, inputs)
    # inputs are rounded to what the recorded behaviour holds when it keeps statistics in another format
    prepared = prepare(inputs, entry.recorded_precision(precision) if entry else precision)
    observed, wrote_into = run_case(backend, mode, prepared, dtype, device)
    declared = judge(mode, observed, prepared, backend.convention, precision)
    seen = dict(wrote_into=wrote_into, inputs=prepared, observed=observed)
    if entry is None:
        return Assessment(declared, **seen)
    # the record's claim, on the channels it makes one about ({} when it claims nothing about this case)
    recorded = entry.apply(prepared, observed, backend.convention, precision).judge(mode)
    return Assessment(declared, entry, recorded, **seen)


REQUEST_ARRAYS = ("x", "gamma", "beta", "running_mean", "running_var", "dy")


def run_case(backend, mode: Mode, prepared: Inputs, dtype: str, device: str) -> tuple[dict[str, np.ndarray], str]:
    """One call on fresh copies of `prepared`: (the outputs as float64 copies, what the backend wrote into among
    its inputs, "" when nothing). A backend that updates its inputs in place and returns them changes nothing
    else: the outputs are copied, and the copies it was given are compared with untouched ones."""
    given, kept = request(prepared, dtype, device), request(prepared, dtype, device)
    observed = backend.run(mode, given).quantities(kept)
    return observed, written_inputs(kept, given)


def written_inputs(before: Request, after: Request) -> str:
    """Which of the request's arrays differ after the call from `before`, with the first change ("" if none)."""
    out = []
    for name in REQUEST_ARRAYS:
        old, new = getattr(before, name), getattr(after, name)
        if old is None:
            continue
        new = np.asarray(new)
        if new.shape != old.shape:
            out.append(f"{name} (reshaped from {old.shape} to {new.shape})")
            continue
        changed = ~((old == new) | (np.isnan(old) & np.isnan(new)))
        if changed.any():
            at = np.unravel_index(int(np.argmax(changed)), changed.shape)
            out.append(f"{name} ({int(changed.sum())} of {old.size} values changed, first at {tuple(map(int, at))}: "
                       f"{float(old[at])!r} -> {float(new[at])!r})")
    return "the backend wrote into its input " + ", ".join(out) if out else ""


def rerun_difference(backend, mode: Mode, a: Assessment, dtype: str, device: str) -> str:
    """Run `a`'s case once more: "" when the outputs are the same bit for bit (NaN where NaN), else what says
    the backend is non-deterministic."""
    try:
        again, _ = run_case(backend, mode, a.inputs, dtype, device)
    except Exception as e:  # noqa: BLE001 - raising on the second run is itself a difference
        return f"non-deterministic: a second run of the same input raised {type(e).__name__}: {e}"
    differences = output_differences(a.observed, again)
    return "non-deterministic: two runs of the same input differ: " + "; ".join(differences) if differences else ""


@np.errstate(invalid="ignore")
def output_differences(first: dict, second: dict) -> list[str]:
    """Per quantity where two runs' outputs differ: by how much, in how many values."""
    out = []
    for q in sorted(set(first) | set(second)):
        a, b = first.get(q), second.get(q)
        if a is None or b is None or a.shape != b.shape:
            out.append(f"{q} returned {'with another shape' if a is not None and b is not None else 'by one run only'}")
            continue
        differ = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        if differ.any():
            out.append(f"{q} by up to {float(np.max(np.abs(a - b)[differ])):.3g} ({int(differ.sum())} of {a.size} values)")
    return out
