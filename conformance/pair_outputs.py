"""Each backend's outputs on one canonical set of pair inputs, saved in its report, so that `bnconf merge` can
pair backends that never shared a process (other machines, other virtual environments, other devices).

The canonical inputs, per mode (crosscheck.MODES), dtype (DTYPES) and input rank (RANKS): `examples` cases drawn
as run_pair draws A's (conformance/cases.case_inputs under Hypothesis, shrinking off, local constants pinned), in
one fixed convention, CANONICAL (PyTorch's functional one: channels first, momentum the new batch's weight),
seeded by the run's seed and (mode, dtype, rank) alone, never by the backend or its partners, then rounded to
what every declared format holds (x, dy and the statistics to the dtype, eps and momentum to float32). A backend
runs the cases of its modes, dtypes and ranks, each translated from CANONICAL to its convention exactly as
run_pair translates A's case for B (crosscheck._target_inputs: momentum, eps, channel axis), and saves per
quantity what it returned and what its convention predicts (the oracle's value, the error model's bound, the
elements without a bound; a known discrepancy's recorded behaviour where one covers the case), all moved back to
the canonical layout. Two backends' rows of the same case then compare as run_pair compares A and B
(crosscheck.judge_case): `compare`.

A row (JSON, one per case the backend was given; `rows_for`):
    {"mode", "dtype", "rank", "index" (the case's number in its (mode, dtype, rank) draw; -1: the draw itself
     failed), "examples" (cases per draw), "digest" (of the canonical inputs as the backend's formats hold them:
     two rows are the same case only when their digests agree), "input" (describe() of them),
     "convention", "momentum" (in the backend's convention), "eps", "n" (values per channel), "steps",
     "status": "ran" | "skipped" (a case it cannot take: running statistics it does not keep) | "error",
     "reason", "record" (the known discrepancy that stood in for the declared convention, or null),
     "quantities": {"<quantity>": {"observed": ARRAY, "expected": ARRAY, "bound": ARRAY,
                                   "ill": [flat indices of elements without a bound]}}}
    ARRAY = {"dtype": "float64" | "float32", "shape": [...], "data": base64 of the little-endian values}
Observed values are stored as float32 where that is exact (a float32 backend's), otherwise float64; the oracle's
values in float64, bounds in float32 rounded up. Arrays are base64, not JSON numbers: a tenth of the size, NaN and Inf kept.
"""

import base64
import hashlib
import zlib
from dataclasses import dataclass, replace

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings

from ..adapters.protocol import declared_precision
from ..spec import CONVENTIONS, Inputs, Mode, convention, precision_for, translate
from ..spec.oracle import channel_axis
from .battery import describe, run_seeded
from .cases import case_inputs
from .crosscheck import (MODES, PairResult, PairRow, Side, _expected, _target_inputs, _View, case_size,
                         judge_case, moved, moved_expected)
from .engine import prepare, request

CANONICAL = convention("torch.nn.functional.batch_norm")
DTYPES = ("float64", "float32")  # the pair dtypes (crosscheck._common_dtype): float64 where both have it
RANKS = (2, 3, 4, 5)
CANONICAL_AXIS = 1
MAX_SIZE = 256  # values of x per case, and no long reductions: pairs compare conventions, not accuracy at length
ATTRIBUTE_FORMAT = np.float32  # eps and momentum as every declared attribute format holds them


# ---------------------------------------------------------------- arrays in JSON


def encode(a, exact_float32: bool = False) -> dict:
    """An array as JSON: float32 where `exact_float32` allows it and no value changes, else float64."""
    a = np.asarray(a, dtype=np.float64)
    kind = np.float64
    if exact_float32:
        with np.errstate(over="ignore"):
            narrow = a.astype(np.float32)
        if np.array_equal(narrow.astype(np.float64), a, equal_nan=True):
            kind = np.float32
    return _array(a, kind)


def encode_bound(bound) -> dict:
    """A bound as JSON, in float32 rounded up (a tolerance needs no more digits; never tighter than the model's)."""
    b = np.asarray(bound, dtype=np.float64)
    with np.errstate(over="ignore"):
        narrow = b.astype(np.float32)
        narrow = np.where(narrow.astype(np.float64) < b, np.nextafter(narrow, np.float32(np.inf)), narrow)
    return _array(narrow, np.float32)


def _array(a, kind) -> dict:
    data = np.ascontiguousarray(np.asarray(a).astype(np.dtype(kind).newbyteorder("<")))
    return {"dtype": np.dtype(kind).name, "shape": list(np.shape(a)), "data": base64.b64encode(data.tobytes()).decode()}


def decode(d: dict) -> np.ndarray:
    """The float64 array `encode` wrote; ValueError for anything else."""
    kind = {"float64": "<f8", "float32": "<f4"}.get(d.get("dtype"))
    if kind is None or not isinstance(d.get("shape"), list) or not isinstance(d.get("data"), str):
        raise ValueError(f"not a saved array: {str(d)[:80]}")
    values = np.frombuffer(base64.b64decode(d["data"], validate=True), dtype=kind)
    return values.astype(np.float64).reshape(d["shape"])


def digest(i: Inputs) -> str:
    """A short fingerprint of a case's inputs (every array's shape and values, axis, eps, momentum, running count)."""
    h = hashlib.sha256()
    r = i.running
    for a in (i.x, i.dy, i.gamma, i.beta, None if r is None else r.mean, None if r is None else r.var):
        h.update(b"-" if a is None else repr(np.shape(a)).encode() + np.ascontiguousarray(a, dtype="<f8").tobytes())
    h.update(repr((i.axis, i.eps, i.momentum, None if r is None else r.count)).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- the backend's side, in its own run


def canonical_cases(mode: Mode, dtype: str, rank: int, examples: int, run_seed: int) -> list[Inputs]:
    """The canonical inputs of (mode, dtype, rank): the same list whatever backend asks, from the seed alone."""
    view = _View(CANONICAL, (rank,), (CANONICAL_AXIS,))
    found: list[Inputs] = []
    as_attribute = lambda v: None if v is None else float(ATTRIBUTE_FORMAT(v))  # noqa: E731

    @seed(run_seed * 1_000_003 + zlib.crc32(f"canonical pair inputs|{mode.value}|{dtype}|{rank}".encode()))
    @settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case_inputs(view, mode, dtype, max_size=MAX_SIZE, max_reduction=0))
    def draw(i):
        i = prepare(i, precision_for(dtype))
        found.append(replace(i, eps=as_attribute(i.eps), momentum=as_attribute(i.momentum)))

    run_seeded(draw)
    return found


def rows_for(backend, examples: int, seed: int, device: str) -> list[dict]:
    """`backend`'s rows (see the module docstring) on the canonical inputs of every mode, dtype and rank it
    declares, on `device`; a case that raises is that row's error, never an exception here."""
    rows: list[dict] = []
    if examples <= 0:
        return rows
    ranks = set(getattr(backend, "ranks", backend.convention.ranks))
    for mode in MODES:
        for dtype in DTYPES:
            if mode not in backend.modes or dtype not in backend.dtypes:
                continue
            for rank in (r for r in RANKS if r in ranks):
                key = dict(mode=mode.value, dtype=dtype, rank=rank, examples=examples)
                try:
                    cases = canonical_cases(mode, dtype, rank, examples, seed)
                except Exception as e:  # noqa: BLE001 - the draw itself failed: one row says so
                    rows.append(dict(key, index=-1, status="error", reason=f"drawing the cases: {type(e).__name__}: {e}"))
                    continue
                rows += [dict(key, index=k, **_run_case(backend, mode, dtype, device, i)) for k, i in enumerate(cases)]
    return rows


def _run_case(backend, mode: Mode, dtype: str, device: str, canonical: Inputs) -> dict:
    precision = declared_precision(backend, dtype, device)
    i = prepare(canonical, precision)  # as the backend's formats hold it: the digest says whether partners agree
    row = dict(digest=digest(i), input=describe(i), convention=backend.convention.name, eps=i.eps, momentum=None,
               status="ran", reason="", record=None)
    try:
        target = _target_inputs(i, _View(CANONICAL, (), (CANONICAL_AXIS,)), backend, mode)
    except ValueError as e:  # a case the translation refuses, as in run_pair
        return dict(row, status="error", reason=f"translation: {e} [{row['input']}]")
    if target is None:
        return dict(row, status="skipped", reason="needs running statistics the backend does not keep")
    ib, axis_b, _ = target
    n, steps = case_size(ib)
    row.update(momentum=ib.momentum, eps=ib.eps, n=n, steps=steps)
    try:
        observed = backend.run(mode, request(ib, dtype, device)).quantities()
        expected, record = _expected(backend, mode, ib, dtype, device, precision)
        rank, axis = ib.x.ndim, channel_axis(ib.x.ndim, CANONICAL_AXIS)
        quantities = {}
        for q in sorted(set(observed) & set(expected)):
            e = moved_expected(expected[q], axis_b, axis, rank)
            quantities[q] = {"observed": encode(moved(observed[q], axis_b, axis, rank), exact_float32=True),
                             "expected": encode(e.value), "bound": encode_bound(e.bound),
                             "ill": np.flatnonzero(np.asarray(e.ill, dtype=bool)).tolist()}
    except Exception as e:  # noqa: BLE001 - reported with the input, as in run_pair
        return dict(row, status="error", reason=f"{type(e).__name__}: {e} [{row['input']}]")
    return dict(row, record=record, quantities=quantities)


# ---------------------------------------------------------------- two backends' saved rows against each other


@dataclass(frozen=True)
class Saved:
    """An oracle value saved with its bound (the `expected` of crosscheck.judge_case)."""

    value: np.ndarray
    bound: np.ndarray
    ill: np.ndarray


@dataclass(frozen=True)
class Case:
    """One saved row, read back."""

    mode: str
    dtype: str
    rank: int
    index: int
    examples: int
    digest: str
    input: str
    convention: str
    momentum: float | None
    eps: float | None
    n: int
    steps: int
    status: str
    reason: str
    record: str | None
    observed: dict
    expected: dict

    @property
    def key(self) -> tuple:
        return self.mode, self.dtype, self.rank, self.index


def read_rows(rows) -> list[Case]:
    """A report's rows for one backend as Cases; ValueError naming the first row that is not one."""
    if not isinstance(rows, list):
        raise ValueError("pair outputs are not a list of rows")
    return [_case(k, r) for k, r in enumerate(rows)]


def _case(k: int, r) -> Case:
    try:
        observed, expected = {}, {}
        for q, d in (r.get("quantities") or {}).items():
            observed[q] = decode(d["observed"])
            value = decode(d["expected"])
            ill = np.zeros(value.size, dtype=bool)
            ill[np.asarray(d.get("ill", []), dtype=np.int64)] = True
            expected[q] = Saved(value, decode(d["bound"]), ill.reshape(value.shape))
        return Case(str(r["mode"]), str(r["dtype"]), int(r["rank"]), int(r["index"]), int(r["examples"]),
                    str(r.get("digest", "")),
                    str(r.get("input", "")), str(r.get("convention", "")), r.get("momentum"), r.get("eps"),
                    int(r.get("n", 0)), int(r.get("steps", 1)), str(r.get("status", "ran")), str(r.get("reason", "")),
                    r.get("record"), observed, expected)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise ValueError(f"pair output row {k} cannot be read ({type(e).__name__}: {e})") from None


def examples_of(cases: list[Case]) -> set[int]:
    """The cases-per-draw counts the rows were made with (one, for rows of one run)."""
    return {c.examples for c in cases}


def _translation(a: Case, b: Case):
    """A's convention translated to B's for this case (for the residuals' names and sizes); None where a
    convention is not one this bnconf records, or the translation refuses the case."""
    source, target = CONVENTIONS.get(a.convention), CONVENTIONS.get(b.convention)
    if source is None or target is None:
        return None
    try:
        return translate(source, target, momentum=a.momentum, eps=a.eps)
    except ValueError:
        return None


def compare(a_name: str, a_cases: list[Case], b_name: str, b_cases: list[Case], mode: Mode) -> PairResult:
    """Two backends' saved rows of `mode` against each other, as crosscheck.run_pair would compare them in one
    process: the same verdicts, "not comparable" reasons and error counting; cases compared in float64 where both
    saved it, else float32, on their common ranks, only where both saved the same inputs (digest)."""
    result = PairResult(a_name, b_name, mode.value, "ran")
    dtypes = ({c.dtype for c in a_cases}, {c.dtype for c in b_cases})
    dtype = next((d for d in DTYPES if d in dtypes[0] and d in dtypes[1]), None)
    ranks = {c.rank for c in a_cases} & {c.rank for c in b_cases}
    has_mode = [any(c.mode == mode.value for c in cases) for cases in (a_cases, b_cases)]
    why = ("no common dtype" if dtype is None else "no common input rank" if not ranks
           else f"{mode.value} not supported by both" if not all(has_mode) else "")
    if why:
        result.status, result.reason = "not comparable", why
        return result
    theirs = {c.key: c for c in b_cases}
    mine = sorted((c for c in a_cases if c.mode == mode.value and c.dtype == dtype and c.rank in ranks),
                  key=lambda c: (c.rank, c.index))
    failed_draws = [c for c in b_cases if c.index < 0 and (c.mode, c.dtype) == (mode.value, dtype) and c.rank in ranks]
    rows: dict[str, PairRow] = {}
    errors = [f"{b_name}: {c.reason}" for c in failed_draws]
    differ = compared = 0
    for a in mine:
        b = theirs.get(a.key)
        if a.index < 0:
            errors.append(f"{a_name}: {a.reason}")
            continue
        if b is None or "skipped" in (a.status, b.status):
            continue
        if b.digest != a.digest:
            differ += 1
            continue
        failed = [f"{name}: {c.reason}" for name, c in ((a_name, a), (b_name, b)) if c.status == "error"]
        if failed:
            errors += failed
            continue
        compared += 1
        judge_case(rows, mode.value, Side(a_name, a.observed, a.expected, a.record),
                   Side(b_name, b.observed, b.expected, b.record), _translation(a, b), a.n, a.steps, a.input)
    result.rows = sorted(rows.values(), key=lambda r: r.quantity)
    if differ:
        result.reason = (f"{differ} case(s) not compared: the two runs drew different inputs for them (another "
                         "Hypothesis or NumPy version draws other cases); make both reports with the same versions")
        if not compared and not errors:
            result.status = "not comparable"
    if errors:
        result.status, result.reason = "error", f"{len(errors)} case(s) raised; first: {errors[0]}"
    return result
