"""Convention inference: probe a backend with designed inputs and say which semantics it implements.

`infer(backend)` runs a few train/eval forwards whose outputs separate the hypotheses of each property
(momentum style, zero-debias, cumulative average, running-variance estimator and its Bessel floor, eps
placement and clamp, channel axis, eval with running statistics, half-precision accumulation) and returns an
`Inference`: one `Finding` per property with the probe that decided it and, for every hypothesis, the
relative residual with which it explains the outputs. A hypothesis is accepted when its residual is within
`spec.probe_tolerance` of the format the quantity is read in (y: the input format; running statistics: the
declared statistics format), times the probe's conditioning. `Inference.matches(convention)` compares the
findings with a declared `spec.Convention` record; `Inference.verdicts` also says which differences a known
discrepancy explains (an entry of the registry that covers a probe that decided the property). The momentum
probe measures the weight on the new batch, w = (new - old) / (batch - old), from the running mean; every
other running-statistic property is read against that measured w.
"""

from dataclasses import dataclass, field, replace

import numpy as np

from ..adapters.protocol import OutputError, Request, channel_axes, declared_precision
from ..spec import Convention, EpsPlacement, Mode, MomentumStyle, Variance, float_format, probe_tolerance
from . import inference_probes as p
from .ideal import inputs_of
from .known import DISCREPANCIES as REGISTRY, backend_named, discrepancies_for
from .refusal import is_refusal

HALF = ("float16", "bfloat16")
MOMENTA = (0.1, 0.3)  # in the backend's own convention; two values so that w = m and w = 1 - m never coincide
STEPS_SEEN = (0, 3)  # batches_seen: a zero-debiased or cumulative weight depends on it, a plain one does not
EPS = 1e-3
TINY_EPS = 1e-9
NOT_TRACKED = "no running statistics"
WIDE_SUMS, HALF_SUMS = "float32 (or wider)", "half"
RUNNING = ("running_mean", "running_var")
# the quantities each property is read from: a known discrepancy explains a difference only through them
READ_FROM = {"momentum_style": RUNNING, "zero_debias": RUNNING, "cumulative_average": RUNNING,
             "running_var": RUNNING, "bessel_divisor_min": RUNNING}  # the others: y


@dataclass(frozen=True)
class Finding:
    """One inferred property: its value, the probe (one line), and each hypothesis's relative residual."""

    property: str
    value: object
    evidence: str
    candidates: dict = field(default_factory=dict)
    probes: tuple = field(default=(), repr=False, compare=False)  # the (mode, Request) calls that decided it

    def __str__(self) -> str:
        fits = ", ".join(f"{h}: {r:.3g}" for h, r in self.candidates.items())
        return f"{self.property} = {self.value}  [{self.evidence}]" + (f"  residuals {{{fits}}}" if fits else "")


@dataclass
class Inference:
    """The findings for one backend, keyed by property."""

    backend: str
    dtype: str
    findings: dict[str, Finding]
    device: str = "cpu"
    declared_accumulation: dict = field(default_factory=dict)  # half dtype -> the declared accumulator format

    def __getitem__(self, prop: str) -> object:
        return self.findings[prop].value

    def matches(self, convention: Convention) -> dict[str, bool]:
        """Whether each inferred property agrees with `convention`'s record (a property the probes could not
        reach agrees only where the record says it does not apply either)."""
        c, v = convention, self.__getitem__
        tracked = c.tracks_running_stats
        out = {
            "channel_axis": _axis_agrees(v("channel_axis")),
            "eps_placement": v("eps_placement") == c.eps_placement,
            "eps_min": _eps_min_agrees(v("eps_min"), c.eps_min),
            "eps_in_training": v("eps_in_training") in (EPS, "read by the eps probe") or (
                c.eps_min > EPS and _eps_min_agrees(v("eps_in_training"), c.eps_min)),
            "eval_uses_running_stats": v("eval_uses_running_stats") in (True, None),
            "momentum_style": v("momentum_style") == (c.momentum_style if tracked else NOT_TRACKED),
            "zero_debias": v("zero_debias") == (c.zero_debias if tracked else NOT_TRACKED),
            "cumulative_average": v("cumulative_average") == (c.cumulative_average if tracked else NOT_TRACKED),
            "running_var": v("running_var") == (c.running_var if tracked else NOT_TRACKED),
        }
        floor = v("bessel_divisor_min")
        if not tracked:
            out["bessel_divisor_min"] = floor == NOT_TRACKED
        elif c.running_var is Variance.UNBIASED:
            out["bessel_divisor_min"] = floor in ((1,) if c.bessel_divisor_min >= 1 else (0, "rejected"))
        else:
            out["bessel_divisor_min"] = floor in ("n/a (biased)", "rejected")
        for prop, finding in self.findings.items():
            if prop.startswith("accumulation["):
                declared = self.declared_accumulation.get(prop[len("accumulation["):-1])
                out[prop] = finding.value == (HALF_SUMS if declared in HALF else WIDE_SUMS)
        return out

    def verdicts(self, convention: Convention, registry=None) -> dict[str, str]:
        """Per property: "agrees" with the record; "differs as recorded: <ids>" where a known discrepancy
        covers a probe that decided it (the backend is known to compute something else on that input); else
        "DIFFERS", a difference nobody has explained. `registry` None: the records that apply to the backend
        (`known.discrepancies_for`, found by its name), else the built-ins."""
        registry = _records_of(self.backend) if registry is None else registry
        out = {}
        for prop, agrees in self.matches(convention).items():
            if agrees:
                out[prop] = "agrees"
                continue
            ids = self.explaining(prop, registry)
            out[prop] = f"differs as recorded: {', '.join(ids)}" if ids else "DIFFERS"
        return out

    def explaining(self, prop: str, registry=None) -> list[str]:
        """The ids of the registry's entries that cover one of the probes behind `prop` and record a difference
        in a quantity `prop` is read from, in registry order (`registry` None: as in `verdicts`)."""
        registry = _records_of(self.backend) if registry is None else registry
        read_from = set(READ_FROM.get(prop.split("[")[0], ("y",)))
        cases = [(mode, r.dtype, r.device, inputs_of(r)) for mode, r in self.findings[prop].probes]
        return [d.id for d in registry
                if read_from & set(d.quantities) and any(d.covers(self.backend, *case) for case in cases)]

    def __str__(self) -> str:
        return f"{self.backend} ({self.dtype}):\n" + "\n".join(f"  {f}" for f in self.findings.values())


def _records_of(backend_name: str) -> tuple:
    """The known discrepancies of the backend of that name (`known.discrepancies_for`, when the run registered
    it), else the built-ins."""
    backend = backend_named(backend_name)
    return discrepancies_for(backend) if backend is not None else REGISTRY


def _axis_agrees(found: dict) -> bool:
    """Every channel axis the backend declares (and was asked for) is the one it reduces over."""
    return bool(found) and all(a == b for a, b in found.items())


def _eps_min_agrees(found, declared: float) -> bool:
    if found is None:
        return False
    if declared == 0.0:
        return found == 0.0
    return abs(found - declared) <= 1e-3 * declared


# ---------------------------------------------------------------- the session with one backend


class _Probe:
    """Runs requests on one backend, dtype and device, in the backend's rank and channel axis, and logs them.

    `tol_y` is the tolerance of quantities read from y (the coarser of the input format and the declared
    compute format), `stats_format` the format running statistics are read in (the declared statistics format)."""

    def __init__(self, backend, device: str, dtype: str | None, before=None):
        self.backend, self.device, self.before = backend, device, before
        self.dtype = dtype or next(d for d in ("float64", "float32", *backend.dtypes) if d in backend.dtypes)
        ranks = tuple(getattr(backend, "ranks", backend.convention.ranks))
        self.rank = 2 if 2 in ranks else min(ranks)
        axes = channel_axes(backend)
        self.axis = backend.convention.channel_axis if backend.convention.channel_axis in axes else axes[0]
        declared = declared_precision(backend, self.dtype, device)
        coarser = max((self.dtype, declared.compute), key=lambda f: float_format(f).unit_roundoff)
        self.tol_y = probe_tolerance(coarser)  # y is computed in the declared format, then stored in the input's
        self.stats_format = declared.stats
        self.log: list[tuple[Mode, Request]] = []

    def call(self, mode: Mode, r: Request):
        """Run one probe on fresh copies of its arrays (the log keeps its own): a backend that writes into its
        inputs, or returns them updated in place, corrupts no other probe. The outputs come back as float64
        copies; OutputError where one is not a real floating-point array."""
        r = p.fresh(r)
        self.log.append((mode, r))
        if self.before:
            self.before(mode, r)
        out = self.backend.run(mode, p.fresh(r))
        return replace(out, **out.quantities())

    def run(self, mode: Mode, rows, dtype: str | None = None, **kw):
        x = p.shaped(rows, self.rank, self.axis)
        return self.call(mode, Request(x=x, axis=self.axis, dtype=dtype or self.dtype, device=self.device,
                                       **{"eps": EPS, **kw}))

    def rows(self, a) -> np.ndarray:
        return p.per_channel(a, self.axis)


def _decide(prop: str, candidates: dict, tol: float, evidence: str, value_of=lambda h: h) -> Finding:
    """The best-fitting hypothesis, or None when even it misses by more than `tol` (the evidence then names
    the best one and its residual)."""
    best = min(candidates, key=candidates.get)
    value = value_of(best) if candidates[best] <= tol else None
    note = "" if value is not None else f"; no hypothesis within {tol:.2g}; best: {best} (residual {candidates[best]:.2g})"
    return Finding(prop, value, evidence + note, candidates)


def _error(prop: str, value, what: str, e: Exception) -> Finding:
    return Finding(prop, value, f"{what} raised {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}", {})


def _refused(prop: str, value, label: str, what: str, e: Exception) -> Finding:
    """`value` where the backend refused the probe's input (conformance/refusal.py, the edge cases' definition);
    undecided (None) where it crashed: a crash says nothing about the property."""
    f = _error(prop, value, what, e)
    if is_refusal(e):
        return Finding(prop, value, f"{label}: {f.evidence}", {})
    return Finding(prop, None, f"{f.evidence} (a crash, not a refusal)", {})


# ---------------------------------------------------------------- channel axis


def _channel_axis(pr: _Probe) -> Finding:
    x = p.axis_probe_input(pr.rank)
    asked = [a for a in channel_axes(pr.backend)]
    found, cands, shapes = {}, {}, []
    for a in asked:
        try:
            y = np.asarray(pr.call(Mode.TRAIN_FORWARD, Request(
                x=x, axis=a, eps=1e-5, dtype=pr.dtype, device=pr.device)).y, dtype=np.float64)
        except Exception as e:  # noqa: BLE001 - a backend's refusal is a finding
            return _error("channel_axis", {}, f"train forward of shape {x.shape} on axis {a}", e)
        fits = {k: p.relative_residual(y, p.normalized_over(x, k, 1e-5)) for k in range(pr.rank)}
        k = min(fits, key=fits.get)
        found[a] = a if k == a % pr.rank else k
        cands.update({f"asked {a}, reduced over all but {k2}": r for k2, r in fits.items()})
    evidence = (f"train forward of integers of shape {x.shape} with different means along every axis, "
                f"asked channel axes {asked}")
    return Finding("channel_axis", found, evidence, cands)


# ---------------------------------------------------------------- running statistics


def _weight_conditioning(batch_mean: np.ndarray) -> float:
    """How much w = (new - old) / (batch - old) amplifies the rounding of new: max |new| / min |batch - old|."""
    m0 = p.RUNNING_START[0]
    return float(max(abs(m0), np.max(np.abs(batch_mean))) / np.min(np.abs(batch_mean - m0)))


def _weight(out, batch_mean: np.ndarray) -> np.ndarray:
    m0 = p.RUNNING_START[0]
    return (np.asarray(out.running_mean, dtype=np.float64) - m0) / (batch_mean - m0)


def _running_step(pr: _Probe, momentum, seen: int, rows=p.MOMENTUM_ROWS):
    c = rows.shape[1]
    out = pr.run(Mode.TRAIN_FORWARD, rows, momentum=momentum, batches_seen=seen,
                 running_mean=np.full(c, p.RUNNING_START[0]), running_var=np.full(c, p.RUNNING_START[1]))
    if out.running_mean is None or out.running_var is None:
        raise OutputError("train forward returned no running statistics")  # not a refusal: no ValueError
    return out


def _predicted_weight(style: MomentumStyle, debias: bool, m: float, seen: int) -> float:
    w = m if style is MomentumStyle.NEW_WEIGHT else 1.0 - m
    return w / (1.0 - (1.0 - w) ** (seen + 1)) if debias else w


def _momentum(pr: _Probe) -> tuple[list[Finding], dict]:
    """Momentum style and zero-debias, jointly fitted to w measured at two momenta and two step counts."""
    batch_mean = p.MOMENTUM_ROWS.mean(axis=0)
    measured, outs = {}, {}
    try:
        for m in MOMENTA:
            for t in STEPS_SEEN:
                outs[m, t] = _running_step(pr, m, t)
                measured[m, t] = float(np.mean(_weight(outs[m, t], batch_mean)))
    except Exception as e:  # noqa: BLE001
        return [_error(q, NOT_TRACKED, "train forward with running statistics", e)
                for q in ("momentum_style", "zero_debias")], {}
    joint = {
        (s, d): max(abs(measured[k] - _predicted_weight(s, d, *k)) / _predicted_weight(s, d, *k) for k in measured)
        for s in MomentumStyle for d in (False, True)
    }
    tol = probe_tolerance(pr.stats_format, _weight_conditioning(batch_mean))
    ws = ", ".join(f"m={m} t={t}: w={w:.6g}" for (m, t), w in measured.items())
    evidence = (f"train step from running (mean {p.RUNNING_START[0]}, var {p.RUNNING_START[1]}) on {p.MOMENTUM_ROWS.T.tolist()} "
                f"per channel; w = (new - old) / (batch - old): {ws}")
    style = {s.value: min(r for (s2, _), r in joint.items() if s2 is s) for s in MomentumStyle}
    debias = {str(d): min(r for (_, d2), r in joint.items() if d2 is d) for d in (False, True)}
    return [
        _decide("momentum_style", style, tol, evidence, MomentumStyle),
        _decide("zero_debias", debias, tol, evidence, lambda h: h == "True"),
    ], {"outs": outs, "measured": measured}


def _cumulative(pr: _Probe) -> Finding:
    batch_mean = p.MOMENTUM_ROWS.mean(axis=0)
    try:
        ws = {t: float(np.mean(_weight(_running_step(pr, None, t), batch_mean))) for t in STEPS_SEEN}
    except Exception as e:  # noqa: BLE001
        return _refused("cumulative_average", False, "not supported", "train step with momentum None", e)
    fit = max(abs(w - 1.0 / (t + 1)) * (t + 1) for t, w in ws.items())
    evidence = "momentum None, " + ", ".join(f"batches_seen {t}: w={w:.6g}" for t, w in ws.items())
    tol = probe_tolerance(pr.stats_format, _weight_conditioning(batch_mean))
    return Finding("cumulative_average", bool(fit <= tol), evidence + " (cumulative: w = 1/(t+1))",
                   {"cumulative 1/(t+1)": fit})


def _running_var(pr: _Probe, momentum_data: dict) -> Finding:
    """k = (new_var - (1 - w) * old_var) / (w * biased batch var): 1 biased, n/(n-1) Bessel-corrected."""
    if not momentum_data:
        return Finding("running_var", NOT_TRACKED, "no train step with running statistics succeeded", {})
    n = p.MOMENTUM_ROWS.shape[0]
    bvar = p.MOMENTUM_ROWS.var(axis=0)
    ks = []
    for (m, t), out in momentum_data["outs"].items():
        w = _weight(out, p.MOMENTUM_ROWS.mean(axis=0))
        new = np.asarray(out.running_var, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):  # w = 0: statistics not updated, k undefined
            ks.append((new - (1.0 - w) * p.RUNNING_START[1]) / (w * bvar))
    ks = np.array(ks)
    # new_var carries old_var's rounding: relative to the measured w * bvar that is old_var / (w * bvar)
    w_min = min(float(np.min(_weight(o, p.MOMENTUM_ROWS.mean(axis=0)))) for o in momentum_data["outs"].values())
    with np.errstate(divide="ignore"):
        conditioning = _weight_conditioning(p.MOMENTUM_ROWS.mean(axis=0)) * p.RUNNING_START[1] / (w_min * bvar.min())
    cands = {v.value: float(np.max(np.abs(ks - k)) / k) for v, k in ((Variance.BIASED, 1.0), (Variance.UNBIASED, n / (n - 1)))}
    evidence = (f"n={n} per channel, biased batch var {bvar.tolist()}; averaged estimator / biased var = "
                f"{np.round(ks.mean(), 6)} (Bessel: {n}/{n - 1})")
    return _decide("running_var", cands, probe_tolerance(pr.stats_format, conditioning), evidence, Variance)


def _bessel_floor(pr: _Probe, running_var) -> Finding:
    """One value per channel: the Bessel divisor n - 1 = 0 gives a non-finite running var unless floored."""
    if running_var == NOT_TRACKED or running_var is None:
        return Finding("bessel_divisor_min", NOT_TRACKED if running_var == NOT_TRACKED else None,
                       "running variance not inferred", {})
    rows = p.MOMENTUM_ROWS[:1]
    try:
        out = _running_step(pr, MOMENTA[1], STEPS_SEEN[1], rows)
    except Exception as e:  # noqa: BLE001
        what = f"train step on one value per channel {rows.tolist()}"
        return _refused("bessel_divisor_min", "rejected", "rejected", what, e)
    rv = np.asarray(out.running_var, dtype=np.float64)
    evidence = f"train step on one value per channel {rows.tolist()}: running var {rv.tolist()}"
    if running_var is Variance.BIASED:
        return Finding("bessel_divisor_min", "n/a (biased)", evidence, {})
    finite = bool(np.all(np.isfinite(rv)))
    return Finding("bessel_divisor_min", 1 if finite else 0,
                   evidence + (" (finite: n - 1 floored at 1)" if finite else " (non-finite: divides by n - 1 = 0)"), {})


# ---------------------------------------------------------------- eps, eval


def _inverse_stds(pr: _Probe, eps: float, train: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Measured s per channel at known variances: eval with running mean 0 and var v on x = +-1 when the
    backend has an eval mode (and `train` is not asked for), else train on +-a (biased variance a**2)."""
    c = len(p.EPS_PROBE_VARS)
    if Mode.EVAL_FORWARD in pr.backend.modes and not train:
        try:
            rows = np.array([[1.0] * c, [-1.0] * c])
            out = pr.run(Mode.EVAL_FORWARD, rows, eps=eps, running_mean=np.zeros(c), running_var=p.EPS_PROBE_VARS)
            s = (pr.rows(out.y) / rows).mean(axis=0)
            return p.EPS_PROBE_VARS, s, f"eval on x=+-1, running mean 0, running var {p.EPS_PROBE_VARS.tolist()}, eps {eps:g}"
        except Exception:  # noqa: BLE001 - fall back to the training forward
            pass
    a = p.EPS_TRAIN_HALF_RANGE
    rows = np.stack([a, -a])
    out = pr.run(Mode.TRAIN_FORWARD, rows, eps=eps)
    s = (pr.rows(out.y) / rows).mean(axis=0)
    return a**2, s, f"train on x=+-a, biased var a**2 = {(a**2).tolist()}, eps {eps:g}"


def _eps(pr: _Probe) -> list[Finding]:
    """Placement: the hypothesis whose eps, solved from the smallest-variance channel, predicts the others.
    Clamp: the effective eps measured when asking for 1e-9."""
    try:
        v, s, probe = _inverse_stds(pr, EPS)
    except Exception as e:  # noqa: BLE001
        return [_error(q, None, "eps probe", e) for q in ("eps_placement", "eps_min")]
    cands, estimates = {}, {}
    for placement in EpsPlacement:
        inside = placement is EpsPlacement.INSIDE_SQRT
        e = p.eps_estimate(s[0], v[0], inside)
        estimates[placement] = e
        cands[placement.value] = p.relative_residual(s, p.inverse_std(v, e, inside)) if e >= 0 else float("inf")
    placement = _decide("eps_placement", cands, pr.tol_y, f"{probe}; measured s = y/x {np.round(s, 6).tolist()}",
                        EpsPlacement)
    inside = placement.value is not EpsPlacement.OUTSIDE_SQRT
    try:
        v2, s2, probe2 = _inverse_stds(pr, TINY_EPS)
    except Exception as e:  # noqa: BLE001
        return [placement, _error("eps_min", None, "eps probe at 1e-9", e)]
    e_tiny = p.eps_estimate(s2[0], v2[0], inside)
    e_asked = estimates[placement.value or EpsPlacement.INSIDE_SQRT]
    as_asked = abs(e_tiny - TINY_EPS) / TINY_EPS
    clamped = as_asked > max(pr.tol_y * 4, 1e-2)  # 1/s**2 at s = 1/sqrt(1e-9) doubles s's rounding
    evidence = (f"{probe2}: effective eps {e_tiny:.4g} (asked {TINY_EPS:g}); at eps {EPS:g}: effective {e_asked:.4g}")
    return [placement, Finding("eps_min", float(e_tiny) if clamped else 0.0, evidence,
                               {"eps as asked (relative difference)": as_asked})]


def _eps_in_training(pr: _Probe, placement) -> Finding:
    """The effective eps of the training forward, where the eps probe read eval: both modes must use the eps
    asked for (a layer that hard-codes eps in one branch normalizes differently in training and inference)."""
    prop = "eps_in_training"
    if Mode.EVAL_FORWARD not in pr.backend.modes:
        return Finding(prop, "read by the eps probe", "the backend has no eval forward: eps was probed in training", {})
    try:
        v, s, probe = _inverse_stds(pr, EPS, train=True)
    except Exception as e:  # noqa: BLE001
        return _error(prop, None, "train eps probe", e)
    inside = placement is not EpsPlacement.OUTSIDE_SQRT
    effective = p.eps_estimate(s[0], v[0], inside)
    fit = p.relative_residual(s, p.inverse_std(v, EPS, inside))
    return Finding(prop, float(effective) if fit > pr.tol_y else EPS,
                   f"{probe}; effective eps {effective:.4g} (asked {EPS:g})", {f"eps as asked ({EPS:g})": fit})


def _eval_stats(pr: _Probe) -> Finding:
    if Mode.EVAL_FORWARD not in pr.backend.modes:
        return Finding("eval_uses_running_stats", None, "the backend has no eval forward", {})
    rows = p.MOMENTUM_ROWS
    c = rows.shape[1]
    m, v = p.RUNNING_START
    try:
        y = pr.rows(pr.run(Mode.EVAL_FORWARD, rows, running_mean=np.full(c, m), running_var=np.full(c, v)).y)
    except Exception as e:  # noqa: BLE001
        return _error("eval_uses_running_stats", None, "eval forward with running statistics", e)
    cands = {
        "running statistics": p.relative_residual(y, (rows - m) / np.sqrt(v + EPS)),
        "batch statistics": p.relative_residual(y, (rows - rows.mean(0)) / np.sqrt(rows.var(0) + EPS)),
    }
    evidence = f"eval on {rows.T.tolist()} per channel with running (mean {m}, var {v}), batch mean {rows.mean(0).tolist()}"
    return _decide("eval_uses_running_stats", cands, pr.tol_y, evidence, lambda h: h == "running statistics")


# ---------------------------------------------------------------- half precision


def _accumulation(pr: _Probe, dtype: str) -> Finding:
    """A long channel whose sequential half-precision sum stagnates: y agrees with float64 statistics under
    float32 (or wider) accumulation, and is off by more than that allows under half accumulation (by exactly the
    sequential model's amount when the sums run in order; a half-precision tree sum of this pattern is exact,
    so it reads as wide)."""
    rows = p.long_channel(dtype)
    prop = f"accumulation[{dtype}]"
    try:
        y = pr.rows(pr.run(Mode.TRAIN_FORWARD, rows, dtype=dtype, eps=1e-5).y)
    except Exception as e:  # noqa: BLE001
        return _error(prop, None, f"train forward of {rows.shape[0]} values in {dtype}", e)
    exact = (rows - rows.mean()) / np.sqrt(rows.var() + 1e-5)
    cands = {
        "float32 (or wider) accumulation": p.relative_residual(y, exact),
        "half accumulation, in sequence": p.relative_residual(y, p.half_accumulated_y(rows, dtype, 1e-5)),
    }
    tol = probe_tolerance(dtype)
    wide, sequential = cands.values()
    evidence = (f"train forward of {rows.shape[0]} values 1-2**-4, 1-2**-3 in one channel ({dtype}); "
                f"y vs float64 statistics off by {wide:.3g} (float32 accumulation allows {tol:.3g})")
    if not np.isfinite(wide):
        return Finding(prop, None, evidence + "; non-finite output", cands)
    if wide <= tol:
        return Finding(prop, WIDE_SUMS, evidence, cands)
    order = "as sequential half sums predict" if sequential <= tol else "another summation order than in sequence"
    return Finding(prop, HALF_SUMS, f"{evidence}; {order}", cands)


# ---------------------------------------------------------------- entry point


def infer(backend, device: str = "cpu", dtype: str | None = None, before=None, half_dtypes=None) -> Inference:
    """Probe `backend` in `dtype` (default float64, else float32, else its first) and infer its convention.

    Half-precision accumulation is probed for every float16/bfloat16 dtype of `half_dtypes` the backend
    declares; without `half_dtypes`, for every one it declares (only `dtype` when one is given and it is a
    half format). `before(mode, request)` is told before each probe runs."""
    pr = _Probe(backend, device, dtype, before)
    findings: list[Finding] = []

    def probing(step, *args):
        """Run one step and attach the probes it made to each of its findings."""
        start = len(pr.log)
        out = step(pr, *args)
        found = out[0] if isinstance(out, tuple) else out
        probes = tuple(pr.log[start:])
        findings.extend(replace(f, probes=f.probes + probes) for f in (found if isinstance(found, list) else [found]))
        return out

    probing(_channel_axis)
    _, data = probing(_momentum)
    momentum_probes = findings[-1].probes
    if data:
        probing(_cumulative)
    else:
        findings.append(Finding("cumulative_average", NOT_TRACKED, "no running statistics", {}))
    var = replace(_running_var(pr, data), probes=momentum_probes)  # read from the momentum probes' outputs
    findings.append(var)
    start = len(findings)
    probing(_bessel_floor, var.value)
    findings[start] = replace(findings[start], probes=findings[start].probes + var.probes)  # read against var
    probing(_eps)
    probing(_eps_in_training, findings[-2].value)
    probing(_eval_stats)
    if half_dtypes is not None:
        halves = [d for d in dict.fromkeys(half_dtypes) if d in HALF and d in backend.dtypes]
    else:
        halves = [dtype] if dtype in HALF else ([] if dtype else [d for d in HALF if d in backend.dtypes])
    for d in halves:
        probing(_accumulation, d)
    accumulation = {d: declared_precision(backend, d, device).accumulate for d in halves}
    return Inference(backend.name, pr.dtype, {f.property: f for f in findings}, device, accumulation)


def probe_dtypes(backend, dtypes) -> tuple[str | None, list[str]]:
    """(the dtype the probes run in, the half dtypes whose accumulation is probed) for a run that selected
    `dtypes`: of the selected dtypes the backend declares, the widest in infer's order of preference (float64,
    else float32, else the first), and every selected half dtype. (None, []) when it declares none of them;
    with `dtypes` None, infer's defaults (every dtype selected)."""
    if dtypes is None:
        return None, [d for d in HALF if d in backend.dtypes]
    declared = [d for d in dict.fromkeys(dtypes) if d in backend.dtypes]
    preferred = [d for d in ("float64", "float32") if d in declared] + declared
    return (preferred[0] if preferred else None), [d for d in declared if d in HALF]


def _severity(c) -> float:
    """How badly a failing comparison fails: its error/bound, infinite where that cannot measure it (non-finite
    mismatches, nothing checked, a quantity not returned)."""
    if c.nonfinite_mismatches or not c.checked or not np.isfinite(c.max_ratio):
        return float("inf")
    return max(c.max_ratio, np.nextafter(0.0, 1.0))


def deciding_probe(backend, finding: Finding, before=None):
    """The probe of `finding` whose case fails the battery's judgement worst against the declared convention,
    rerun through `engine.assess` (so that its saved case replays to the same finding); the last probe when
    none fails on its own (the difference shows only between probes). None when it has no probe."""
    from .engine import assess

    best, score = None, -1.0
    for mode, r in finding.probes:
        try:
            if before:
                before(mode, r)
            problems = assess(backend, mode, inputs_of(r), r.dtype, r.device).problems()
        except Exception:  # noqa: BLE001 - a probe the spec cannot judge is no case to replay
            continue
        worst = max((_severity(c) for c in problems.values()), default=0.0)  # 0: this probe alone conforms
        if worst >= score:
            best, score = (mode, r), worst
    return best or (finding.probes[-1] if finding.probes else None)


def _probe_replay(backend, finding: Finding, cases_dir, before=None) -> str:
    """Save the deciding probe of a DIFFERS finding under `cases_dir`; the command that replays it."""
    from .repro import replay_line, save_case

    probe = deciding_probe(backend, finding, before)
    if probe is None:
        return ""
    mode, r = probe
    try:
        return replay_line(save_case(cases_dir, backend, mode, inputs_of(r), r.dtype, r.device), backend)
    except OSError as e:
        return f"(the probe could not be saved: {e.strerror or e})"


def report_rows(backend, before=None, dtypes=None, cases_dir=None) -> list[dict]:
    """Inference on `backend`'s first device that runs now, in the widest of the run's `dtypes` the backend
    declares (`probe_dtypes`; nothing when it declares none of them), as the report's rows (JSON-ready).
    With `cases_dir`, each DIFFERS row's deciding probe is saved there and the row's "replay" reruns it."""
    from ..adapters.protocol import first_available_device

    device = first_available_device(backend)
    dtype, halves = probe_dtypes(backend, dtypes)
    if device is None or (dtypes is not None and dtype is None):
        return []
    try:
        inference = infer(backend, device, dtype, before=before, half_dtypes=halves)
    except Exception as e:  # noqa: BLE001 - probing is advice: a backend it cannot probe still gets its verdict
        return [dict(backend=backend.name, property="-", value=None, agrees=False, verdict="probing failed",
                     candidates={}, evidence=f"probing failed: {type(e).__name__}: {e}", dtype=dtype, replay="")]
    verdicts = inference.verdicts(backend.convention, registry=discrepancies_for(backend))
    rows = []
    for prop, f in inference.findings.items():
        verdict = verdicts.get(prop, "agrees")
        replay = _probe_replay(backend, f, cases_dir, before) if verdict == "DIFFERS" and cases_dir is not None else ""
        rows.append(dict(backend=backend.name, property=prop, value=str(getattr(f.value, "value", f.value)),
                         agrees=verdict == "agrees", verdict=verdict, evidence=f.evidence, dtype=inference.dtype,
                         candidates={str(k): float(v) for k, v in f.candidates.items()}, replay=replay))
    return rows
