"""The edge-case battery: every applicable case of `spec.edge_cases` through one backend, each outcome classified.

    run_edge_cases(backend, device)  ->  [EdgeOutcome(backend, device, dtype, case, mode, agrees, outcome, recorded)]

A case is placed on the backend's smallest rank and first channel axis; a case or mode the backend cannot
express (`check_request` refuses the request up front, or the case is not for its convention) is skipped.
Edge cases judge semantics, not precision. An outcome agrees when the backend refuses where the spec
requires or allows a refusal (`conformance/refusal.py`: a ValueError, an ArithmeticError or TensorFlow's
InvalidArgumentError; any other exception is a crash), or returns values where the spec allows that: every
element in the class the spec's pattern gives it (finite, NaN, +Inf, -Inf), every finite element within the
error model's bound for the dtype (`rounding_precision`: arithmetic in the data format, at least float32
accumulators) of the oracle under the backend's declared convention (or the recorded model of a known
discrepancy that covers the case), every required quantity returned. A different class of outcome (NaN
vs finite, +Inf vs -Inf, values vs a required refusal, a refusal where values are required, a crash) or a
value no rounding in the dtype explains is a disagreement, described in a short factual sentence. Finite
values outside the backend's declared precision's bound but within the dtype's rounding agree, with a
precision note (`EdgeOutcome.precision`): the main battery judges precision. No exception from a backend
escapes: it is an outcome. Where a framework really does something other than the spec says,
`conformance/known/edge.py` records it; an outcome an entry matches is marked recorded, and `stale_records`
lists entries that matched nothing.
"""

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..adapters.protocol import channel_axes, check_request, declared_precision, unavailable
from ..spec import Convention, Expected, Inputs, Mode, Precision, expected, probe_tolerance
from ..spec.edge_cases import EDGE_CASES, X_SHAPED, EdgeCase, Expectation, Kind, Refusal, kinds, kinds_agree
from ..spec.error_model import RECURSIVE
from ..spec.formats import float_format, wider
from ..spec.verdict import quantity_format, required_quantities
from .discrepancies import covering
from .engine import prepare, request
from .inference_probes import shaped
from .known import EDGE_RECORDS, backend_named, discrepancies_for, edge_records_for
from .records import EdgeRecord
from .refusal import Behaviour, behaviour_of, is_refusal, raised_in

AGREES = "returns the spec's values"
WITHIN_ROUNDING = "returns the spec's values within the dtype's rounding"
_ADAPTERS_DIR = Path(__file__).resolve().parent.parent / "adapters"
_MESSAGE_LIMIT = 160


@dataclass
class EdgeOutcome:
    """One (backend, case, mode) run: agrees with the spec, or what the backend does instead."""

    backend: str
    device: str
    dtype: str
    case: str
    mode: str
    agrees: bool
    outcome: str
    recorded: str | None = None  # the id of the EdgeRecord that explains a disagreement
    behaviour: Behaviour = Behaviour.VALUES  # returned values, refused, or crashed
    precision: str = ""  # finite values outside the declared precision's bound but within the dtype's rounding


def as_row(outcome: EdgeOutcome) -> dict:
    """The outcome as a JSON-ready dict."""
    return {**asdict(outcome), "behaviour": outcome.behaviour.value}


def edge_records() -> tuple[EdgeRecord, ...]:
    """The built-in recorded edge behaviours (`known.EDGE_RECORDS`)."""
    return EDGE_RECORDS


# ---------------------------------------------------------------- placement


@dataclass(frozen=True)
class Placement:
    """Where a backend takes a case's rows: its smallest rank, its first channel axis."""

    rank: int
    axis: int

    def x_shaped(self, rows: np.ndarray) -> np.ndarray:
        return shaped(rows, self.rank, self.axis)

    def inputs(self, i: Inputs) -> Inputs:
        place = lambda a: None if a is None else self.x_shaped(a)  # noqa: E731
        return replace(i, x=place(i.x), dy=place(i.dy), axis=self.axis)


def placement(backend) -> Placement:
    ranks = sorted(r for r in getattr(backend, "ranks", backend.convention.ranks) if 2 <= r <= 5)
    return Placement(ranks[0], channel_axes(backend)[0])


# ---------------------------------------------------------------- exceptions


def describe_exception(e: BaseException) -> str:
    """'raises Type: first line of the message', saying so when a bnconf adapter (not the framework) raised it."""
    lines = str(e).strip().splitlines()
    message = lines[0] if lines else ""
    if len(message) > _MESSAGE_LIMIT:
        message = message[:_MESSAGE_LIMIT] + "…"
    where = raised_in(e)
    own = where is not None and Path(where).resolve().parent == _ADAPTERS_DIR
    return f"raises {type(e).__name__}: {message}" + (f" (in bnconf's {Path(where).name})" if own else "")


# ---------------------------------------------------------------- describing values


def _channels(cols: list[int], channels: int) -> str:
    if channels > 1 and len(cols) == channels:
        return "every channel"
    return ("channels " if len(cols) > 1 else "channel ") + ", ".join(map(str, cols))


def describe_kinds(k: np.ndarray) -> str:
    """A class pattern in rows form ((n, C), or (C,) per channel) in words: 'NaN in channel 0', 'finite'."""
    k = np.atleast_2d(k)
    parts = []
    labels = (("NaN", Kind.NAN), ("+Inf", Kind.POS_INF), ("-Inf", Kind.NEG_INF), ("non-finite", Kind.NONFINITE))
    for label, kind in labels:
        cols = [int(c) for c in np.flatnonzero((k == kind).any(axis=0))]
        if cols:
            whole = (k[:, cols] == kind).all()
            parts.append(f"{label} in {'' if whole or k.shape[0] == 1 else 'part of '}{_channels(cols, k.shape[1])}")
    return "; ".join(parts) or "finite"


def _values(v: np.ndarray) -> str:
    return "[" + ", ".join(f"{float(a):.4g}" for a in np.ravel(v)[:6]) + (", …]" if np.size(v) > 6 else "]")


def rounding_precision(p: Precision) -> Precision:
    """The error model's loosest precision for `p`'s data format (SPEC.md §4.1, what a standard permits):
    elementwise arithmetic and the returned statistics in the data format, reductions accumulated in at least
    float32, in any order (`p`'s own formats where they are narrower still). A finite value within its bound
    is one rounding in the dtype explains: a precision matter, not a semantic one."""
    at_least_float32 = wider(float_format(p.dtype), float_format("float32")).name
    return replace(p, compute=_narrower(p.compute, p.dtype), accumulate=_narrower(p.accumulate, at_least_float32),
                   stats=_narrower(p.stats, p.dtype), summation=RECURSIVE)


def _narrower(a: str, b: str) -> str:
    """Of two formats, the one with fewer significand bits."""
    return a if float_format(a).precision <= float_format(b).precision else b


@dataclass(frozen=True)
class _Reference:
    """Expected values of one quantity in the backend's layout, with two per-element bounds: the declared
    precision's (`bound`; none where `ill`) and the dtype's rounding (`rounding`, at least `bound`; none where
    `rounding_ill`)."""

    value: np.ndarray
    bound: np.ndarray
    ill: np.ndarray
    rounding: np.ndarray
    rounding_ill: np.ndarray


def _reference(declared: Expected, loosest: Expected) -> _Reference:
    """One quantity's reference from the oracle under the declared precision and under `rounding_precision`."""
    return _Reference(declared.value, declared.bound, np.asarray(declared.ill, bool),
                      np.maximum(declared.bound, loosest.bound), np.asarray(loosest.ill, bool))


def _oracle(mode, placed: Inputs, convention: Convention, precision: Precision) -> dict[str, _Reference]:
    with np.errstate(all="ignore"):
        declared = expected(mode, placed, convention, precision)
        loosest = expected(mode, placed, convention, rounding_precision(precision))
    return {q: _reference(e, loosest[q]) for q, e in declared.items()}


def _explicit(exp: Expectation, rows_inputs: Inputs, where: Placement, precision: Precision) -> dict[str, _Reference]:
    refs = {}
    for q, v in exp.values(rows_inputs).items():
        v = where.x_shaped(v) if q in X_SHAPED else np.asarray(v, dtype=np.float64)
        bound = probe_tolerance(quantity_format(q, precision)) * np.abs(v)
        rounding = probe_tolerance(quantity_format(q, rounding_precision(precision))) * np.abs(v)
        none = np.zeros(v.shape, dtype=bool)
        refs[q] = _Reference(v, bound, none, np.maximum(bound, rounding), none)
    return refs


@dataclass(frozen=True)
class _Values:
    """What the finite values say: semantic problems (outside the dtype's rounding) and precision notes
    (outside the declared bound, within the rounding)."""

    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _ratio(obs: np.ndarray, value: np.ndarray, bound: np.ndarray, checked: np.ndarray) -> np.ndarray:
    """|obs - value| / bound on the checked elements, 0 elsewhere."""
    with np.errstate(all="ignore"):
        return np.where(checked, np.abs(obs - value) / np.maximum(bound, np.finfo(float).tiny), 0.0)


def _value_problems(observed: dict, refs: dict[str, _Reference], patterns: dict, where: Placement,
                    dtype: str) -> _Values:
    """Per quantity, its worst finite element outside the dtype's rounding (a problem) or else outside the
    declared bound (a precision note); `dtype` is the data format."""
    problems, notes = [], []
    for q, obs in observed.items():
        ref = refs.get(q)
        if ref is None or ref.value.shape != obs.shape:
            continue
        finite = np.isfinite(obs) & np.isfinite(ref.value) & (patterns[q] == Kind.FINITE)
        semantic = _ratio(obs, ref.value, ref.rounding, finite & ~ref.rounding_ill)
        declared = _ratio(obs, ref.value, ref.bound, finite & ~ref.ill)
        if (semantic > 1.0).any():
            at = _worst(semantic)
            problems.append(f"{q} off in channel {_channel(q, at, where)}: {obs[at]:.6g} where the spec has "
                            f"{ref.value[at]:.6g}")
        elif (declared > 1.0).any():
            at = _worst(declared)
            notes.append(f"{q} in channel {_channel(q, at, where)}: {obs[at]:.6g} where the spec has "
                         f"{ref.value[at]:.6g}: {declared[at]:.3g} × the declared precision's bound, within {dtype} "
                         "arithmetic's bound")
    return _Values(tuple(problems), tuple(notes))


def _worst(ratio: np.ndarray) -> tuple:
    return np.unravel_index(int(np.argmax(ratio)), ratio.shape)


def _channel(q: str, at: tuple, where: Placement) -> int:
    return int(at[where.axis % where.rank] if q in X_SHAPED else at[0])


def _weight_moved(observed: dict, rows_inputs: Inputs) -> str:
    """'running_mean moved with weight w = …' (a momentum outside [0, 1] shows as w outside it)."""
    if "running_mean" not in observed or rows_inputs.running is None or rows_inputs.x.shape[0] == 0:
        return ""
    old, batch = rows_inputs.running.mean, rows_inputs.x.mean(axis=0)
    with np.errstate(all="ignore"):
        w = (observed["running_mean"] - old) / (batch - old)
    w = w[np.isfinite(w)]
    return f", running_mean moved with weight w = {float(np.median(w)):.4g}" if w.size else ""


# ---------------------------------------------------------------- one case


@dataclass(frozen=True)
class _Run:
    """One (backend, case, mode, dtype, device) and its inputs, in rows form and as the backend takes them."""

    backend: object
    case: EdgeCase
    mode: Mode
    dtype: str
    device: str
    precision: Precision
    where: Placement
    rows: Inputs  # the case's inputs, rounded to the backend's formats, rows form (axis 1)
    placed: Inputs  # the same on the backend's rank and channel axis

    @property
    def expectation(self) -> Expectation:
        return self.case.expect[self.mode]

    def pattern(self, q: str) -> np.ndarray:
        p = self.case.pattern(self.mode, q)
        return self.where.x_shaped(p).astype(np.int8) if q in X_SHAPED else p

    def rows_of(self, q: str, a: np.ndarray) -> np.ndarray:
        """A quantity's array in rows form: (n, C) for x-shaped ones, (C,) as given for the others."""
        if q not in X_SHAPED:
            return a
        moved = np.moveaxis(a, self.where.axis % a.ndim, -1)
        return moved.reshape(int(np.prod(moved.shape[:-1])), moved.shape[-1])


def run_case(backend, case: EdgeCase, mode: Mode, dtype: str, device: str = "cpu", before=None) -> EdgeOutcome | None:
    """Run `mode` of `case` once; None when the backend cannot express it. `before()` is called right before
    the backend runs."""
    conv = backend.convention
    if mode not in backend.modes or not case.applies(conv) or dtype not in backend.dtypes:
        return None
    where = placement(backend)
    precision = declared_precision(backend, dtype, device)
    rows = prepare(case.inputs(mode, conv), precision)
    run = _Run(backend, case, mode, dtype, device, precision, where, rows, where.inputs(rows))
    req = request(run.placed, dtype, device)
    try:
        check_request(backend, mode, req)
    except ValueError:
        return None
    refusal = run.expectation.refusal_for(conv)

    def outcome(agrees: bool, text: str, behaviour=Behaviour.VALUES, precision: str = "") -> EdgeOutcome:
        return EdgeOutcome(backend.name, device, dtype, case.id, mode.value, agrees, text, None, behaviour, precision)

    if before:
        before()
    try:
        returned = backend.run(mode, req).quantities()
    except Exception as e:  # noqa: BLE001 -- whatever a backend raises is an outcome
        behaviour = behaviour_of(e)
        return outcome(*_raised(e, behaviour, refusal), behaviour)
    observed = {q: v for q, v in returned.items() if q in mode.quantities and q not in run.expectation.unspecified}
    if refusal is Refusal.REQUIRED:
        return outcome(False, _accepted(run, observed))
    problems, values = _problems(run, observed)
    text = "; ".join(problems + list(values.problems)) or (WITHIN_ROUNDING if values.notes else AGREES)
    return outcome(not (problems or values.problems), text, precision="; ".join(values.notes))


def _raised(e: BaseException, behaviour: Behaviour, refusal: Refusal) -> tuple[bool, str]:
    """(agrees, description) of an exception: a refusal agrees where the spec requires or allows one; a
    refusal where values are required and a crash (anywhere) do not."""
    text = describe_exception(e)
    if behaviour is Behaviour.CRASH:
        return False, f"{text} (a crash, not a refusal)"
    if refusal is Refusal.FORBIDDEN:
        return False, f"{text} (a refusal where the spec requires values)"
    return True, text


def _accepted(run: _Run, observed: dict) -> str:
    """What a backend that should have refused returned instead."""
    nonfinite = [f", {q} {describe_kinds(run.rows_of(q, kinds(v)))}"
                 for q, v in observed.items() if not np.isfinite(v).all()]
    return "accepts it: returns without raising" + "".join(nonfinite) + _weight_moved(observed, run.rows)


def _problems(run: _Run, observed: dict) -> tuple[list[str], _Values]:
    """What in the returned values differs from the spec: missing or misshapen quantities and classes; and what
    the finite values say, against the reference that explains them best."""
    exp = run.expectation
    missing = required_quantities(run.mode, run.placed) - set(observed) - set(exp.unspecified)
    problems = [f"does not return {q}" for q in sorted(missing)]
    patterns = {}
    for q, obs in list(observed.items()):
        shape = run.placed.x.shape if q in X_SHAPED else (run.case.channels,)
        if obs.shape != shape:
            problems.append(f"returns {q} of shape {obs.shape} where {shape} is expected")
            del observed[q]
            continue
        patterns[q] = run.pattern(q)
        got = kinds(obs)
        if not kinds_agree(got, patterns[q]).all():
            problems.append(f"{q} {describe_kinds(run.rows_of(q, got))} "
                            f"(spec: {describe_kinds(run.rows_of(q, patterns[q]))})")
    judged = (_value_problems(observed, r, patterns, run.where, run.precision.dtype) for r in _references(run))
    return problems, min(judged, key=lambda v: (len(v.problems), len(v.notes)))


def _references(run: _Run) -> list[dict[str, _Reference]]:
    """The values the spec expects: explicit ones, or the oracle's under the declared model and, where a known
    discrepancy of the main battery covers the case, under its recorded model too (a recorded precision or
    convention is not an edge behaviour: it would otherwise be reported here a second time)."""
    if run.expectation.values is not None:
        return [_explicit(run.expectation, run.rows, run.where, run.precision)]
    conv = run.backend.convention
    refs = [_oracle(run.mode, run.placed, conv, run.precision)]
    entry = covering(discrepancies_for(run.backend), run.backend.name, run.mode, run.dtype, run.device, run.placed)
    if entry is not None:  # the record applied as everywhere: its unchecked channels make no claim
        recorded = entry.apply(run.placed, {}, conv, run.precision)
        loosest = replace(recorded, precision=rounding_precision(recorded.precision)).expected(run.mode)
        # the record speaks for its own quantities only; the others keep the declared reference
        refs.append({**refs[0], **{q: _reference(e, loosest[q]) for q, e in recorded.expected(run.mode).items()
                                   if q in entry.quantities}})
    return refs


# ---------------------------------------------------------------- a backend, and the records


def case_dtypes(backend, case: EdgeCase, dtypes: tuple[str, ...] | None) -> tuple[str, ...]:
    """The dtypes a case runs in: each of `dtypes` the case and backend share, or (None) the first of the case's
    the backend takes."""
    if dtypes is None:
        return next(((d,) for d in case.dtypes if d in backend.dtypes), ())
    return tuple(d for d in dtypes if d in case.dtypes and d in backend.dtypes)


def run_edge_cases(backend, device: str = "cpu", dtypes: tuple[str, ...] | None = None,
                   cases: tuple[EdgeCase, ...] = EDGE_CASES,
                   records: tuple[EdgeRecord, ...] | None = None, before=None, after=None,
                   skip=frozenset()) -> list[EdgeOutcome]:
    """Every applicable (case, mode, dtype) on `backend`, disagreements marked with the record that explains them.
    An unavailable device gives no outcomes. `before(case, mode, dtype)` and `after(outcome)` are told around
    each run (an isolating worker reports which case is running and streams the outcomes); `skip` holds
    (dtype, case id, mode value) triples not to run (already run by a worker that crashed later)."""
    if unavailable(backend, device):
        return []
    records = edge_records_for(backend) if records is None else records
    outcomes = []
    for case in cases:
        for dtype in case_dtypes(backend, case, dtypes):
            for mode in case.modes:
                if (dtype, case.id, mode.value) in skip:
                    continue
                o = run_case(backend, case, mode, dtype, device,
                             before=before and (lambda case=case, mode=mode, dtype=dtype: before(case, mode, dtype)))
                if o is None:
                    continue
                if not o.agrees:
                    o.recorded = next((r.id for r in records if r.matches(o)), None)
                outcomes.append(o)
                if after:
                    after(o)
    return outcomes


def stale_records(outcomes: list[EdgeOutcome], backend_names,
                  records: tuple[EdgeRecord, ...] | None = None) -> list[EdgeRecord]:
    """Entries that covered an outcome (a backend that ran, one of `backend_names`, in the entry's case, modes
    and dtypes) and matched none of them (`records` None: those that apply to the named backends, found by name
    as the run registered them, else the built-ins)."""
    if records is None:
        named = [backend_named(n) for n in backend_names]
        records = tuple(dict.fromkeys(r for b in named if b is not None for r in edge_records_for(b)))
        records += tuple(r for r in edge_records() if r not in records) if None in named else ()

    ran = [o for o in outcomes if o.backend in backend_names]
    return [r for r in records if record_use(r, ran)[0] and not any(o.recorded == r.id for o in outcomes)]


def record_use(record: EdgeRecord, outcomes) -> tuple[int, int]:
    """(how many of `outcomes` the record covers that no other record explains, how many it explains): a record
    that covers some and explains none is stale. An outcome an earlier, more specific record explains is not
    this one's to explain (a user's record overriding a built-in one leaves the built-in unneeded, not stale)."""
    covered = [o for o in outcomes if record.covers(o) and o.recorded in (None, record.id)]
    return len(covered), sum(o.recorded == record.id for o in covered)


def unexplained(outcomes: list[EdgeOutcome]) -> list[EdgeOutcome]:
    """Disagreements no record explains."""
    return [o for o in outcomes if not o.agrees and o.recorded is None]


__all__ = ["AGREES", "WITHIN_ROUNDING", "Behaviour", "EdgeOutcome", "EdgeRecord", "as_row", "describe_exception",
           "describe_kinds", "edge_records", "is_refusal", "placement", "record_use", "rounding_precision", "run_case",
           "run_edge_cases", "stale_records", "unexplained"]
