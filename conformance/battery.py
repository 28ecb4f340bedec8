"""The conformance battery behind `bnconf report`: every selected cell explored by Hypothesis, worst cases kept.

For each (backend, device, dtype, mode) cell, Hypothesis draws `examples` cases from the same strategies
the pytest suite uses, targets the largest error/bound ratio, and every quantity keeps its worst case.
The result is plain data (`CellResult`, `QuantityRow`, with `status.CellStatus` and `status.RowVerdict`) that
the renderers turn into tables and JSON. A case whose backend raises, returns outputs that are not real
floating-point arrays or writes into its inputs makes the cell an error; a failing case runs a second time, and
outputs that change name the backend non-deterministic.
A fixed seed gives the same cases, so the same report.
"""

import sys
import time
import zlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings, target
from hypothesis import strategies as st

from ..adapters.protocol import OutputError, declared_precision, unavailable
from ..spec import Inputs, Verdict
from ..spec.diagnosis import diagnose
from ..spec.error_model import split_layout
from ..spec.oracle import channels_first
from .arrays import numpy_format
from .cases import Plan, case_inputs, combinations, plan_for
from .discrepancies import matches
from .engine import ACCEPTED, assess, rerun_difference
from .status import CellStatus, RowVerdict


@dataclass
class QuantityRow:
    """The worst case of one quantity in one cell."""

    quantity: str
    verdict: RowVerdict = RowVerdict.CONFORMS
    max_error: float = 0.0
    max_ratio: float = 0.0
    max_ulp: float | None = None  # spec/ulp.py: None where no checked element has a meaningful ULP figure
    detail: str = ""
    worst_input: str = ""
    discrepancy: str = ""
    examples: int = 0
    failures: int = 0
    failure: str = ""  # NON-CONFORMANT: the spec's verdict on the case shown (e.g. "convention difference")
    # NON-CONFORMANT, when the run keeps cases: `bnconf replay <folder> --backend <target>`, the command that reruns
    # the case shown (the worst failing case found: shrinking is off, Hypothesis's target phase steers to it)
    replay: str = ""
    # at the shown case's worst element: the observed and expected (oracle) values and |observed - expected| /
    # max(|expected|, the format's smallest normal); None where the row has no checked element
    observed: float | None = None
    expected: float | None = None
    relative_error: float | None = None
    judged: int = 0  # examples where at least one element of the quantity had a bound (was judged, not ill-conditioned)
    ill_reason: str = ""  # ill-conditioned elements: which condition broke the first-order bound, and how large it was
    ill_examples: int = 0  # examples with ill-conditioned elements (ill_reason: the first with nothing checked)
    # NON-CONFORMANT: the mistake that explains the row's failing cases within its own bound (spec/diagnosis.py), or
    # "unexplained"; diagnosis_note: its residual and the runner-up's
    diagnosis: str = ""
    diagnosis_note: str = ""

    def __post_init__(self):
        """Accept the verdict as its string, and the older "NON-CONFORMANT (<failure>)" text of saved reports."""
        text = getattr(self.verdict, "value", self.verdict)
        word = RowVerdict.NON_CONFORMANT.value
        if text.startswith(word + " (") and text.endswith(")"):
            text, self.failure = word, self.failure or text[len(word) + 2:-1]
        self.verdict = RowVerdict(text)

    @property
    def verdict_text(self) -> str:
        """The verdict as reports show it: "NON-CONFORMANT (<failure>)", else the verdict's word."""
        if self.verdict is RowVerdict.NON_CONFORMANT and self.failure:
            return f"{self.verdict.value} ({self.failure})"
        return self.verdict.value


@dataclass
class CellResult:
    backend: str
    convention: str
    device: str
    dtype: str
    mode: str
    status: CellStatus
    reason: str = ""
    seconds: float = 0.0
    rows: list[QuantityRow] = field(default_factory=list)
    # known discrepancy id -> [cases it covered, cases that needed it (the declared semantics failed there)]
    discrepancies: dict[str, list[int]] = field(default_factory=dict)
    # one point per case and quantity: [max |mean|/std, values per channel, quantity, normwise error, error/bound]
    points: list[list] = field(default_factory=list)
    # (affine on/off, running statistics on/off) -> [examples drawn, examples judged]: how much of each combination
    # the cell tested, e.g. {"affine on, running on": [12, 11]}
    coverage: dict[str, list[int]] = field(default_factory=dict)
    # kind of non-finite or extreme input (cases.NONFINITE_KINDS: "nan", "+inf", "-inf", "huge", "tiny") -> [examples
    # drawn, examples judged]: the examples whose x held it in one channel (also counted in `coverage`)
    nonfinite: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self):
        self.status = CellStatus(self.status)  # also from its string, as a worker's JSON gives it


@dataclass(frozen=True)
class Offsets:
    """How offset x's channels are: the largest |mean|/std over the channels that are neither constant nor hold
    NaN or Inf (0 when none is), and how many channels are constant or non-finite."""

    kappa: float
    n: int  # values per channel
    channels: int
    constant: int
    nonfinite: int

    def text(self) -> str:
        """"max|mean|/std=3.2", "max|mean|/std=3.2 constant_channels=1", or "max|mean|/std=none constant_channels=4"
        when every channel is constant (or non-finite)."""
        if self.n == 0:
            return "empty batch"
        measured = self.channels - self.constant - self.nonfinite
        parts = [f"max|mean|/std={self.kappa:.3g}" if measured else "max|mean|/std=none"]
        counts = ((self.constant, "constant"), (self.nonfinite, "nonfinite"))
        parts += [f"{what}_channels={k}" for k, what in counts if k]
        return " ".join(parts)


@np.errstate(all="ignore")  # NaN and Inf channels are counted, not measured
def offsets(inputs: Inputs) -> Offsets:
    """The channels' |mean|/std, constant channels (std 0) and non-finite ones (NaN or Inf) of `inputs.x`."""
    rows = channels_first(np.asarray(inputs.x, dtype=np.float64), inputs.axis)
    n = rows.shape[1]
    if n == 0:
        return Offsets(0.0, 0, rows.shape[0], 0, 0)
    finite = np.isfinite(rows).all(axis=1)
    std = rows.std(axis=1)
    constant = finite & (std == 0)
    measured = finite & ~constant
    kappa = float(np.max(np.abs(rows.mean(axis=1)[measured]) / std[measured])) if measured.any() else 0.0
    return Offsets(kappa, n, rows.shape[0], int(constant.sum()), int((~finite).sum()))


def conditioning(inputs: Inputs) -> tuple[float, int]:
    """(the largest |mean|/std over the channels, values per channel) for the accuracy plot; 0 when a channel is
    constant or non-finite: such a case says nothing about accuracy against conditioning."""
    o = offsets(inputs)
    return (0.0 if o.constant or o.nonfinite else o.kappa), o.n


def describe(inputs: Inputs) -> str:
    """A one-line summary of a case: shape, axis, eps, momentum, affine and running, worst |mean|/std (over the
    channels neither constant nor non-finite, which are counted beside it)."""
    x = np.asarray(inputs.x, dtype=np.float64)
    parts = [f"shape={x.shape}", f"axis={inputs.axis}", f"eps={inputs.eps:.3g}", f"momentum={inputs.momentum}",
             f"affine={'on' if inputs.gamma is not None else 'off'}",
             f"running={'on' if inputs.running is not None else 'off'}", offsets(inputs).text()]
    return " ".join(parts)


def _severity(ratio: float) -> float:
    """A ratio for ranking cases: NaN (an error the bound cannot measure) ranks as the worst."""
    return float("inf") if np.isnan(ratio) else ratio


def target_score(ratio: float) -> float:
    """What Hypothesis maximises: the ratio, finite (it rejects infinity and NaN, which are findings here)."""
    return ratio if np.isfinite(ratio) else sys.float_info.max


def _record(rows: dict, assessment, inputs: Inputs, shown_inputs: dict | None = None) -> None:
    """Count the case in each quantity's row and keep it as the row's shown case when it is the worst so far;
    `shown_inputs[q]` is then the failing case a row shows (to be saved for replay)."""
    recorded = assessment.recorded or {}
    problems = assessment.problems()
    for q, c in assessment.declared.items():
        row = rows.setdefault(q, QuantityRow(q))
        row.examples += 1
        row.judged += c.judged
        known = assessment.discrepancy is not None and q in assessment.discrepancy.quantities and c.verdict not in ACCEPTED
        ruling = recorded.get(q, c) if known else c  # the comparison that decides: the record's where one covers it
        failing = q in problems
        if failing:
            row.failures += 1
        # the row shows the worst failing case once there is one, else the worst accepted case
        worse = _severity(c.max_ratio) >= _severity(row.max_ratio)
        if (failing and (row.failures == 1 or worse)) or (not row.failures and worse):
            _show(row, c, ruling if failing else c, inputs)
            if failing:
                row.failure = ruling.verdict.value
                if shown_inputs is not None:
                    shown_inputs[q] = inputs
        _ill(row, c)
        if failing:
            row.verdict = RowVerdict.NON_CONFORMANT
        elif known and row.verdict is not RowVerdict.NON_CONFORMANT:
            row.verdict, row.discrepancy = RowVerdict.KNOWN, assessment.discrepancy.id
        elif c.verdict is Verdict.ILL_CONDITIONED and row.verdict is RowVerdict.CONFORMS:
            row.verdict = RowVerdict.ILL_CONDITIONED


def _show(row: QuantityRow, c, shown, inputs: Inputs) -> None:
    """Make the case the row's shown one: its figures from the declared comparison `c` (worst element, error/bound,
    ULPs, relative error), its detail from `shown`, or, when `shown` fails and names nothing, what it saw there."""
    row.max_ratio, row.max_ulp = c.max_ratio, c.max_ulp
    row.observed, row.expected, row.relative_error = c.observed, c.expected, c.relative_error
    row.max_error = abs(c.observed - c.expected) if c.observed is not None and c.expected is not None else 0.0
    row.detail = shown.detail or (shown.seen() if shown.verdict not in ACCEPTED else "")
    row.worst_input = describe(inputs)


def _ill(row: QuantityRow, c) -> None:
    """Count an example with ill-conditioned elements and keep why: the first example where nothing could be
    checked (the one that makes the row ill-conditioned), else the first with some such elements."""
    if not c.ill_conditioned:
        return
    row.ill_examples += 1
    first_unchecked = c.verdict is Verdict.ILL_CONDITIONED and row.verdict is not RowVerdict.ILL_CONDITIONED
    if not row.ill_reason or first_unchecked:
        row.ill_reason = c.ill_reason


def _note(rows: dict, notes: dict) -> None:
    """Add what each row's cases showed beyond their values (e.g. non-determinism) to the row's detail."""
    for q, note in notes.items():
        row = rows[q]
        row.detail = f"{row.detail}; {note}" if row.detail else note


def _drawn(cell: CellResult, plan: Plan) -> None:
    """Count an example drawn under `plan` in the cell's coverage (and non-finite counts)."""
    cell.coverage.setdefault(plan.label, [0, 0])[0] += 1
    if plan.nonfinite:
        cell.nonfinite.setdefault(plan.nonfinite, [0, 0])[0] += 1


def _judged(cell: CellResult, plan: Plan, assessment) -> None:
    """Count an assessed example as judged where some quantity was (`Comparison.judged`: an element checked
    against its bound or by the non-finite semantics, or a failure)."""
    if any(c.judged for c in assessment.declared.values()):
        cell.coverage[plan.label][1] += 1
        if plan.nonfinite:
            cell.nonfinite[plan.nonfinite][1] += 1


def least_judged(cell: CellResult) -> int | None:
    """The fewest judged examples of any (affine, running) combination the cell drew (None: no coverage kept)."""
    return min((judged for _, judged in cell.coverage.values()), default=None)


CASES_PER_ROW = 8  # failing cases a NON-CONFORMANT row keeps for its diagnosis: the first half and the worst half


def _keep_failing(kept: dict, assessment) -> None:
    """Keep, per failing quantity, failing cases as (error/bound, inputs as prepared for the backend, outputs) for
    `_diagnose`: the first CASES_PER_ROW / 2 (the generate phase's varied draws) and the worst of the later ones (the
    target phase's, often variations of one input)."""
    for q, c in assessment.problems().items():
        if assessment.observed.get(q) is None:
            continue  # not returned: nothing to diagnose
        cases = kept.setdefault(q, [])
        cases.append((_severity(c.max_ratio), assessment.inputs, assessment.observed))
        first = CASES_PER_ROW // 2
        cases[first:] = sorted(cases[first:], key=lambda t: -t[0])[:CASES_PER_ROW - first]


def _diagnose(rows: list, kept: dict, backend, mode, dtype: str, device: str) -> None:
    """Name the mistake behind each NON-CONFORMANT row from its kept failing cases (spec/diagnosis.py), under the
    backend's declared convention and precision."""
    precision = declared_precision(backend, dtype, device)
    for row in rows:
        if row.verdict is RowVerdict.NON_CONFORMANT and kept.get(row.quantity):
            cases = [(inputs, observed) for _, inputs, observed in kept[row.quantity]]
            d = diagnose(mode, cases, backend.convention, precision, (row.quantity,))
            row.diagnosis, row.diagnosis_note = d.text, d.note


RAISED, UNJUDGEABLE, WROTE = "raised", "returned outputs bnconf cannot judge", "made the backend write into its inputs"


def _reason(errors: dict, replays: dict | None = None) -> str:
    """The cell's error reason: per kind, how many cases and the first of them (and the command that replays it)."""
    replays = replays or {}
    return "; ".join(f"{len(cases)} case(s) {kind}; first: {cases[0]}" + (f"; replay: {replays[kind]}" if replays.get(kind) else "")
                     for kind, cases in errors.items() if cases)


def _saved_replay(cases_dir, backend, mode, inputs: Inputs, dtype: str, device: str) -> str:
    """Save the case under `cases_dir` and return the command that replays it; a case that cannot be saved
    (a full disk) says so instead of failing the cell. The run's records files (`--records`, attached to the
    backend) are stored in case.json and named in the line, so the replay judges the case as the run did."""
    from .repro import replay_line, run_records, save_case

    records = run_records(backend)
    try:
        return replay_line(save_case(cases_dir, backend, mode, inputs, dtype, device, records), backend, records)
    except OSError as e:
        return f"(the case could not be saved: {e.strerror or e})"


@contextmanager
def import_independent_draws():
    """Hypothesis (6.131+) mixes constants found in every loaded local module into its draws, so the same seed
    gives other cases in a process that imported other modules (a report's isolated worker against the same
    run in one process). The battery pins that pool to empty while it explores; the seed alone decides."""
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # another Hypothesis layout: nothing to pin
        yield
        return
    original = getattr(providers, "_get_local_constants", None)
    if original is None or not hasattr(providers, "CONSTANTS_CACHE"):
        yield
        return
    empty = providers.Constants()
    providers._get_local_constants = lambda: empty
    providers.CONSTANTS_CACHE.cache.clear()
    try:
        yield
    finally:
        providers._get_local_constants = original
        providers.CONSTANTS_CACHE.cache.clear()


def run_seeded(test) -> None:
    """Run a seeded Hypothesis test that has no example database, as the battery's and the pairs' are: its draws
    independent of the modules loaded (`import_independent_draws`), and no database key derived (Hypothesis
    otherwise digests the test's source for one on every call, about 6 ms: a tenth of a 5-example cell)."""
    test._hypothesis_internal_database_key = None
    with import_independent_draws():
        test()


def run_cell(backend, device: str, dtype: str, mode, examples: int, run_seed: int, watch=None,
             cases_dir=None) -> CellResult:
    """One cell explored by Hypothesis. `watch(backend, mode, inputs, dtype, device)`, a context manager
    entered around each case, lets an isolating worker say which input is running (conformance/isolation).
    With `cases_dir`, each NON-CONFORMANT row's worst case and the first case of each kind of error are saved
    there as replayable folders (conformance/repro.py), and the row's `replay` / the cell's reason give the
    command that reruns it."""
    cell = CellResult(backend.name, backend.convention.name, device, dtype, mode.value, CellStatus.RAN)
    reason = unavailable(backend, device)
    if reason:
        cell.status, cell.reason = CellStatus.UNSUPPORTED, reason
        return cell
    rows: dict[str, QuantityRow] = {}
    errors: dict[str, list[str]] = {RAISED: [], UNJUDGEABLE: [], WROTE: []}
    notes: dict[str, str] = {}  # quantity -> the first sign of non-determinism in its failing cases
    shown_inputs: dict[str, Inputs] = {}  # quantity -> the failing case its row shows
    failing_cases: dict[str, list] = {}  # quantity -> its first and worst failing cases, for the diagnosis
    first_error: dict[str, Inputs] = {}  # kind of error -> its first case
    for part in filter(None, split_layout(dtype)):  # a process's first bfloat16 cell imports ml_dtypes: start-up,
        numpy_format(part)  # not the cell's time
    start = time.perf_counter()

    key = zlib.crc32(f"{backend.name}|{device}|{dtype}|{mode.value}".encode())
    combos, planned = combinations(backend, mode), []  # the plans of the examples drawn so far, in order

    @seed(run_seed * 1_000_003 + key)  # per cell
    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              phases=[Phase.generate, Phase.target], suppress_health_check=list(HealthCheck))
    @given(st.data())
    def explore(data):
        # the example's plan by its index (a draw Hypothesis rejects takes no index): every combination a share
        plan = plan_for(len(planned), combos, key)
        inputs = data.draw(case_inputs(backend, mode, dtype, plan=plan), label="inputs")
        planned.append(plan)
        _drawn(cell, plan)
        try:
            with watch(backend, mode, inputs, dtype, device) if watch else nullcontext():
                a = assess(backend, mode, inputs, dtype, device)
                # a failing case runs twice: a backend whose outputs change is named as non-deterministic
                unsteady = rerun_difference(backend, mode, a, dtype, device) if a.problems() else ""
        except OutputError as e:  # complex, integer, string... outputs: reported like a raising backend
            errors[UNJUDGEABLE].append(f"{e} [{describe(inputs)}]")
            first_error.setdefault(UNJUDGEABLE, inputs)
            return
        except Exception as e:  # a backend that raises is reported, with the input, and the cell goes on
            errors[RAISED].append(f"{type(e).__name__}: {e} [{describe(inputs)}]")
            first_error.setdefault(RAISED, inputs)
            return
        _record(rows, a, inputs, shown_inputs)
        _judged(cell, plan, a)
        _keep_failing(failing_cases, a)
        if a.wrote_into:
            errors[WROTE].append(f"{a.wrote_into} [{describe(inputs)}]")
            first_error.setdefault(WROTE, inputs)
        if unsteady:
            for q in a.problems():
                notes.setdefault(q, unsteady)
        kappa, n = conditioning(inputs)
        if kappa > 0:  # cases with a constant channel say nothing about accuracy against conditioning
            cell.points += [[round(kappa, 6), n, q, float(f"{c.normwise_error:.4g}"), float(f"{c.max_ratio:.4g}")]
                            for q, c in sorted(a.declared.items())]
        if a.discrepancy is not None:
            counts = cell.discrepancies.setdefault(a.discrepancy.id, [0, 0])
            counts[0] += 1
            counts[1] += a.discrepancy_seen
        target(target_score(max((_severity(c.max_ratio) for c in a.declared.values()), default=0.0)))

    run_seeded(explore)
    cell.seconds = time.perf_counter() - start
    _note(rows, notes)
    cell.rows = sorted(rows.values(), key=lambda r: r.quantity)
    _diagnose(cell.rows, failing_cases, backend, mode, dtype, device)
    replays = {}
    if cases_dir is not None:
        for row in cell.rows:
            if row.verdict is RowVerdict.NON_CONFORMANT and row.quantity in shown_inputs:
                row.replay = _saved_replay(cases_dir, backend, mode, shown_inputs[row.quantity], dtype, device)
        replays = {kind: _saved_replay(cases_dir, backend, mode, inputs, dtype, device)
                   for kind, inputs in first_error.items()}
    if any(errors.values()):
        cell.status, cell.reason = CellStatus.ERROR, _reason(errors, replays)
    return cell


def run_battery(cells, examples: int, run_seed: int, progress=None, on_cell=None, cases_dir=None) -> list[CellResult]:
    """Every cell in this process, in order; `on_cell(result)` sees each result as it arrives; failing cases
    are saved under `cases_dir` (see run_cell)."""
    results = []
    for i, (backend, device, dtype, mode) in enumerate(cells, 1):
        if progress:
            progress(f"[{i}/{len(cells)}] {backend.name} {device} {dtype} {mode.value}")
        results.append(run_cell(backend, device, dtype, mode, examples, run_seed, cases_dir=cases_dir))
        if on_cell:
            on_cell(results[-1])
    return results


@dataclass
class DiscrepancyUse:
    """How a run used one known-discrepancy entry: a covered entry no case needed is stale."""

    id: str
    backends: str
    covered: int
    needed: int
    explanation: str = ""
    evidence: str = ""
    source: str = "built-in"  # "built-in" (conformance/known/), "backend" (its own attribute), or a records file

    @property
    def status(self) -> str:
        if self.needed:
            return "in use"
        return f"STALE: covered {self.covered} case(s), none needed it" if self.covered else "not reached in this run"


def discrepancy_use(results: list[CellResult], registry=None, backends=()) -> list[DiscrepancyUse]:
    """Every record that applies to a backend of the run, with how many of its cases it covered and needed,
    its explanation, evidence and source: the backends' own and attached records first (`known.
    sourced_discrepancies_for`; backends not in `backends` are found by name among those records were attached
    to), then `registry`'s entries (default: the built-ins) that name a backend of the run."""
    from .known import BUILT_IN, DISCREPANCIES, backend_named, sourced_discrepancies_for

    names = list(dict.fromkeys(c.backend for c in results if c.status != CellStatus.UNSUPPORTED))
    given = {b.name: b for b in backends}
    uses: dict[int, list] = {}  # id(record) -> [record, source, the backends it applies to]
    for n in names:
        b = given.get(n) or backend_named(n)
        for entry, source in (sourced_discrepancies_for(b) if b is not None else []):
            if source != BUILT_IN:
                uses.setdefault(id(entry), [entry, source, set()])[2].add(n)
    for entry in (DISCREPANCIES if registry is None else registry):
        for n in names:
            if matches(n, entry.backends):
                uses.setdefault(id(entry), [entry, BUILT_IN, set()])[2].add(n)
    out = []
    for entry, source, applies_to in uses.values():
        counts = [c.discrepancies.get(entry.id, [0, 0]) for c in results if c.backend in applies_to]
        out.append(DiscrepancyUse(entry.id, entry.backends, sum(k[0] for k in counts), sum(k[1] for k in counts),
                                  entry.explanation, entry.evidence, source))
    return out
