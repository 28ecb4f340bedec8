"""The conformance battery behind `bnconf report`: every selected cell explored by Hypothesis, worst cases kept.

For each (backend, device, dtype, mode) cell, Hypothesis draws `examples` cases from the same strategies
the pytest suite uses, targets the largest error/bound ratio, and every quantity keeps its worst case.
The result is plain data (`CellResult`, `QuantityRow`) that the renderers turn into tables and JSON.
A fixed seed gives the same cases, so the same report.
"""

import time
import zlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
from hypothesis import HealthCheck, Phase, given, seed, settings, target

from ..adapters.protocol import unavailable
from ..spec import Inputs, Verdict
from ..spec.oracle import channels_first
from .cases import case_inputs
from .discrepancies import matches
from .engine import ACCEPTED, assess


@dataclass
class QuantityRow:
    """The worst case of one quantity in one cell."""

    quantity: str
    verdict: str  # conforms / known discrepancy / ill-conditioned / NON-CONFORMANT (+ the spec verdict)
    max_error: float = 0.0
    max_ratio: float = 0.0
    max_ulp: float = 0.0
    detail: str = ""
    worst_input: str = ""
    discrepancy: str = ""
    examples: int = 0
    failures: int = 0


@dataclass
class CellResult:
    backend: str
    convention: str
    device: str
    dtype: str
    mode: str
    status: str  # "ran", "unsupported", "error"
    reason: str = ""
    seconds: float = 0.0
    rows: list[QuantityRow] = field(default_factory=list)
    # known discrepancy id -> [cases it covered, cases that needed it (the declared semantics failed there)]
    discrepancies: dict[str, list[int]] = field(default_factory=dict)
    # one point per case and quantity: [max |mean|/std, values per channel, quantity, normwise error, error/bound]
    points: list[list] = field(default_factory=list)


def conditioning(inputs: Inputs) -> tuple[float, int]:
    """(the largest |mean|/std over the channels, values per channel); 0 when a channel is constant."""
    rows = channels_first(np.asarray(inputs.x, dtype=np.float64), inputs.axis)
    std = rows.std(axis=1)
    if not np.all(std > 0):
        return 0.0, rows.shape[1]
    return float(np.max(np.abs(rows.mean(axis=1)) / std)), rows.shape[1]


def describe(inputs: Inputs) -> str:
    """A one-line summary of a case: shape, axis, eps, momentum, affine and running, worst |mean|/std."""
    x = np.asarray(inputs.x, dtype=np.float64)
    kappa, _ = conditioning(inputs)
    parts = [f"shape={x.shape}", f"axis={inputs.axis}", f"eps={inputs.eps:.3g}", f"momentum={inputs.momentum}",
             f"affine={'on' if inputs.gamma is not None else 'off'}",
             f"running={'on' if inputs.running is not None else 'off'}", f"max|mean|/std={kappa:.3g}"]
    return " ".join(parts)


def _record(rows: dict, assessment, inputs: Inputs) -> None:
    recorded = assessment.recorded or {}
    problems = assessment.problems()
    for q, c in assessment.declared.items():
        row = rows.setdefault(q, QuantityRow(q, "conforms"))
        row.examples += 1
        known = assessment.discrepancy is not None and q in assessment.discrepancy.quantities and c.verdict not in ACCEPTED
        judged = recorded.get(q, c) if known else c
        failing = q in problems
        if failing:
            row.failures += 1
        # the row shows the worst failing case once there is one, else the worst accepted case
        if (failing and (row.failures == 1 or c.max_ratio >= row.max_ratio)) or (not row.failures and c.max_ratio >= row.max_ratio):
            shown = judged if failing else c
            row.max_ratio, row.max_ulp = c.max_ratio, c.max_ulp
            row.max_error = abs(c.observed - c.expected) if c.observed is not None and c.expected is not None else 0.0
            row.detail, row.worst_input = shown.detail, describe(inputs)
        if failing:
            row.verdict = f"NON-CONFORMANT ({judged.verdict.value})"
        elif known and not row.verdict.startswith("NON"):
            row.verdict, row.discrepancy = "known discrepancy", assessment.discrepancy.id
        elif c.verdict is Verdict.ILL_CONDITIONED and row.verdict == "conforms":
            row.verdict = "ill-conditioned"


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


def run_cell(backend, device: str, dtype: str, mode, examples: int, run_seed: int, watch=None) -> CellResult:
    """One cell explored by Hypothesis. `watch(backend, mode, inputs, dtype, device)`, a context manager
    entered around each case, lets an isolating worker say which input is running (conformance/isolation)."""
    cell = CellResult(backend.name, backend.convention.name, device, dtype, mode.value, "ran")
    reason = unavailable(backend, device)
    if reason:
        cell.status, cell.reason = "unsupported", reason
        return cell
    rows: dict[str, QuantityRow] = {}
    errors: list[str] = []
    start = time.perf_counter()

    @seed(run_seed * 1_000_003 + zlib.crc32(f"{backend.name}|{device}|{dtype}|{mode.value}".encode()))  # per cell
    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              phases=[Phase.generate, Phase.target], suppress_health_check=list(HealthCheck))
    @given(case_inputs(backend, mode, dtype))
    def explore(inputs):
        try:
            with watch(backend, mode, inputs, dtype, device) if watch else nullcontext():
                a = assess(backend, mode, inputs, dtype, device)
        except Exception as e:  # a backend that raises is reported, with the input, and the cell goes on
            errors.append(f"{type(e).__name__}: {e} [{describe(inputs)}]")
            return
        _record(rows, a, inputs)
        kappa, n = conditioning(inputs)
        if kappa > 0:  # cases with a constant channel say nothing about accuracy against conditioning
            cell.points += [[round(kappa, 6), n, q, float(f"{c.normwise_error:.4g}"), float(f"{c.max_ratio:.4g}")]
                            for q, c in sorted(a.declared.items())]
        if a.discrepancy is not None:
            counts = cell.discrepancies.setdefault(a.discrepancy.id, [0, 0])
            counts[0] += 1
            counts[1] += a.discrepancy_seen
        target(max((c.max_ratio for c in a.declared.values()), default=0.0))

    with import_independent_draws():
        explore()
    cell.seconds = time.perf_counter() - start
    cell.rows = sorted(rows.values(), key=lambda r: r.quantity)
    if errors:
        cell.status, cell.reason = "error", f"{len(errors)} case(s) raised; first: {errors[0]}"
    return cell


def run_battery(cells, examples: int, run_seed: int, progress=None, on_cell=None) -> list[CellResult]:
    """Every cell in this process, in order; `on_cell(result)` sees each result as it arrives."""
    results = []
    for i, (backend, device, dtype, mode) in enumerate(cells, 1):
        if progress:
            progress(f"[{i}/{len(cells)}] {backend.name} {device} {dtype} {mode.value}")
        results.append(run_cell(backend, device, dtype, mode, examples, run_seed))
        if on_cell:
            on_cell(results[-1])
    return results


def conforms(results: list[CellResult]) -> bool:
    """True when every quantity conforms, is ill-conditioned or is a recorded discrepancy, and nothing raised,
    crashed, timed out or ran out of memory."""
    return all(c.status in ("ran", "unsupported") and not any(r.verdict.startswith("NON") for r in c.rows) for c in results)


@dataclass
class DiscrepancyUse:
    """How a run used one known-discrepancy entry: a covered entry no case needed is stale."""

    id: str
    backends: str
    covered: int
    needed: int

    @property
    def status(self) -> str:
        if self.needed:
            return "in use"
        return f"STALE: covered {self.covered} case(s), none needed it" if self.covered else "not reached in this run"


def discrepancy_use(results: list[CellResult], registry) -> list[DiscrepancyUse]:
    """Every registry entry that names a backend of the run, with how many cases it covered and needed."""
    names = {c.backend for c in results if c.status != "unsupported"}
    out = []
    for entry in registry:
        if not any(matches(n, entry.backends) for n in names):
            continue
        covered = sum(c.discrepancies.get(entry.id, [0, 0])[0] for c in results)
        needed = sum(c.discrepancies.get(entry.id, [0, 0])[1] for c in results)
        out.append(DiscrepancyUse(entry.id, entry.backends, covered, needed))
    return out
