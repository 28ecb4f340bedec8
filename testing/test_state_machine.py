"""Running statistics under any sequence of training steps, eval steps and resets (a Hypothesis state machine),
one test per stateful backend: `test_state_machine[my_bn-cpu-float32]`.

After every step the backend's running mean, variance and batch counter equal the oracle's, within the error
model's bound accumulated over the steps, and an eval step never changes them (a backend may return them after
an eval step: they must be the ones it was given, bit for bit). The counter is the one the backend reports
(`Outputs.batches_seen`, where it reports one): compared with the oracle's after every step, eval steps and
resets included. Where a known discrepancy covers a training step (e.g. update ops forgotten), the oracle
follows the recorded behaviour. A failing step's case is saved and its replay line printed.
"""

import pytest

from bnconf.testing import support

PREFERRED_DTYPE = "float32"
CHANNELS = 3


def stateful(backend) -> bool:
    from bnconf.spec import Mode

    return {Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD} <= backend.modes and backend.convention.tracks_running_stats


def machine_dtypes(backend, dtypes) -> list[str]:
    """The run's selected dtypes the backend declares; without a selection, float32 (else its first dtype)."""
    if dtypes:
        return [d for d in dtypes if d in backend.dtypes]
    return [PREFERRED_DTYPE if PREFERRED_DTYPE in backend.dtypes else backend.dtypes[0]]


def pytest_generate_tests(metafunc):
    if metafunc.definition.name == "test_state_machine":
        s = support.selected(metafunc.config)
        params = []
        for b in s.backends:
            device = s.first_device(b)
            if not stateful(b) or device is None:
                continue
            params += [pytest.param(b, device, dtype, id=f"{b.name}-{device}-{dtype}",
                                    marks=[pytest.mark.gpu] if device in ("cuda", "gpu") else [])
                       for dtype in machine_dtypes(b, s.dtypes)]
        metafunc.parametrize("backend, device, dtype", params)


def test_state_machine(backend, device, dtype, request):
    support.skip_unless_runs(backend, device)
    machine_for(backend, device, dtype, support.examples(request.config, 6, 5),
                registry=support.discrepancies_for(backend))("runTest").runTest()


def _unchanged(given, returned) -> bool:
    import numpy as np

    returned = np.asarray(returned, dtype=np.float64)
    return returned.shape == given.shape and bool(np.all((returned == given) | (np.isnan(returned) & np.isnan(given))))


def machine_for(backend, device: str = "cpu", dtype: str = PREFERRED_DTYPE, max_examples: int | None = None,
                registry=None):
    """The state machine's TestCase for `backend` (`registry`: the known discrepancies that apply to it;
    default bnconf's). `max_examples` defaults to a sixth of the Hypothesis profile's, at least 5."""
    import numpy as np
    from hypothesis import settings
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

    from bnconf.adapters.protocol import channel_axes, declared_precision
    from bnconf.conformance import strategies as bst
    from bnconf.conformance.discrepancies import covering
    from bnconf.conformance.engine import ACCEPTED, prepare, request
    from bnconf.conformance.records import RecordedCase
    from bnconf.spec import Inputs, Mode, RunningStats

    registry = support.discrepancies_for(backend) if registry is None else registry
    precision = declared_precision(backend, dtype, device)
    shape_rank = min(r for r in getattr(backend, "ranks", backend.convention.ranks) if r >= 2)
    axis = channel_axes(backend)[0]
    shape = [6, *[2] * (shape_rank - 2)]
    shape.insert(axis % shape_rank, CHANNELS)
    shape = tuple(shape)
    momenta = [0.1, 0.9] + ([None] if backend.convention.cumulative_average else [])
    label = f"{backend.name} {device} {dtype}"

    class RunningStatistics(RuleBasedStateMachine):
        @initialize(momentum=st.sampled_from(momenta))
        def start(self, momentum):
            self.momentum = momentum
            self.steps = 0
            self.reset()

        @rule()
        def reset(self):
            self.backend_state = self.oracle_state = RunningStats.initial(CHANNELS)
            self.error = RunningStats(np.zeros(CHANNELS), np.zeros(CHANNELS))

        def _inputs(self, x, state, error=None):
            return prepare(Inputs(x=x, axis=axis, eps=1e-5, running=state, momentum=self.momentum, running_error=error), precision)

        def _fail(self, mode, what: str, given) -> None:
            lines = [f"{label} {mode.value}, step {self.steps}: {what}"]
            if support.is_final():
                lines.append("replay (this step alone, from the backend's statistics): "
                             + support.replay(backend, mode, given, dtype, device))
            raise AssertionError("\n".join(lines))

        @rule(x=bst.batches(shape, axis, allow_constant=False, max_log10_condition=2.0))
        def train_step(self, x):
            self.steps += 1
            given = self._inputs(x, self.backend_state)
            out = backend.run(Mode.TRAIN_FORWARD, request(given, dtype, device))
            oracle_inputs = self._inputs(x, self.oracle_state, self.error)
            entry = covering(registry, backend.name, Mode.TRAIN_FORWARD, dtype, device, oracle_inputs)
            count = self.oracle_state.count + 1
            seen = count if out.batches_seen is None else out.batches_seen  # the backend's own counter
            observed = out.quantities()
            # the recorded behaviour where a record covers the step (`KnownDiscrepancy.apply`, as the battery
            # applies it), on the channels it makes a claim about; the declared semantics otherwise
            case = (entry.apply(oracle_inputs, observed, backend.convention, precision) if entry is not None
                    else RecordedCase.declared(oracle_inputs, observed, backend.convention, precision))
            results = case.judge(Mode.TRAIN_FORWARD)
            if entry is not None:  # the record speaks for its own quantities; the others stay as declared
                declared = RecordedCase.declared(oracle_inputs, observed, backend.convention, precision)
                results = {**{q: c for q, c in declared.judge(Mode.TRAIN_FORWARD).items()
                              if q not in entry.quantities},
                           **{q: c for q, c in results.items() if q in entry.quantities}}
            # accepted as the battery accepts (engine.ACCEPTED): conforms, or ill-conditioned (the error model
            # has no bound there: half precision after a few steps of carried error)
            bad = {q: f"{c.verdict.value} {c.detail} (error/bound {c.max_ratio:.3g})" for q, c in results.items()
                   if c.verdict not in ACCEPTED}
            if bad:
                self._fail(Mode.TRAIN_FORWARD, "; ".join(f"{q} {text}" for q, text in bad.items()), given)
            exp = case.expected(Mode.TRAIN_FORWARD)
            # where the record claims nothing, carry on from the backend's statistics (no error carried there)
            state = case.merged_state({q: exp[q] for q in ("running_mean", "running_var")}, observed)
            claimed = np.ones(CHANNELS, bool) if case.checked is None else np.asarray(case.checked, bool)
            self.backend_state = RunningStats(out.running_mean, out.running_var, seen)  # counts_agree checks seen
            self.oracle_state = RunningStats(state["running_mean"], state["running_var"], count)
            self.error = RunningStats(np.where(claimed, exp["running_mean"].bound, 0.0),
                                      np.where(claimed, exp["running_var"].bound, 0.0))

        @precondition(lambda self: self.oracle_state.count > 0)
        @rule(x=bst.batches(shape, axis, allow_constant=False, max_log10_condition=2.0))
        def eval_step(self, x):
            self.steps += 1
            given = self._inputs(x, self.backend_state)
            out = backend.run(Mode.EVAL_FORWARD, request(given, dtype, device))
            changed = [q for q, v, was in (("running_mean", out.running_mean, given.running.mean),
                                           ("running_var", out.running_var, given.running.var))
                       if v is not None and not _unchanged(was, v)]
            if changed:
                self._fail(Mode.EVAL_FORWARD, f"{', '.join(changed)} changed by an eval step (eval forward changed the "
                           "running statistics)", given)
            if out.batches_seen is not None:  # a counter reported by an eval step must be the one it was given
                self.backend_state = RunningStats(self.backend_state.mean, self.backend_state.var, out.batches_seen)

        @invariant()
        def counts_agree(self):
            if hasattr(self, "backend_state"):
                assert self.backend_state.count == self.oracle_state.count, (
                    f"{label}: batches_seen: the backend counts {self.backend_state.count} training steps, "
                    f"the oracle {self.oracle_state.count}")

    examples = max_examples if max_examples is not None else max(5, settings().max_examples // 6)
    RunningStatistics.TestCase.settings = support.hypothesis_settings(examples, stateful_step_count=12)
    return RunningStatistics.TestCase
