"""The cross-framework comparison, on ideal backends (the oracle under two conventions): what the
translation removes matches, what it cannot is reported as the difference the spec predicts."""


from bnconf.conformance.crosscheck import MATCHES, PREDICTED, UNEXPECTED, run_matrix, run_pair
from bnconf.conformance.ideal import IdealBackend
from bnconf.spec import Mode, convention

TORCH = IdealBackend(convention("torch.nn.functional.batch_norm"))
KERAS = IdealBackend(convention("keras.layers.BatchNormalization"))


def _rows(result):
    return {r.quantity: r for r in result.rows}


def test_pytorch_and_keras_agree_on_the_output_and_running_mean_after_translating_momentum():
    rows = _rows(run_pair(TORCH, KERAS, Mode.TRAIN_FORWARD, examples=15, run_seed=1))
    assert rows["y"].verdict == MATCHES
    assert rows["running_mean"].verdict == MATCHES
    assert rows["saved_mean"].verdict == MATCHES


def test_the_bessel_corrected_running_variance_is_the_predicted_irreducible_difference():
    row = _rows(run_pair(TORCH, KERAS, Mode.TRAIN_FORWARD, examples=15, run_seed=1))["running_var"]
    assert row.verdict == PREDICTED
    assert "running variance estimator" in row.residuals and "predicted" in row.residuals
    assert row.max_relative > 0


def test_eval_and_backward_match_after_translation():
    for mode in (Mode.EVAL_FORWARD, Mode.TRAIN_BACKWARD):
        rows = _rows(run_pair(TORCH, KERAS, mode, examples=10, run_seed=2))
        assert rows and all(r.verdict == MATCHES for r in rows.values()), (mode, rows)


class _OffByOne(IdealBackend):
    """Keras's convention, but y shifted: a difference no convention predicts."""

    def run(self, mode, r):
        out = super().run(mode, r)
        if out.y is not None:
            out.y = out.y + 1.0
        return out


def test_a_difference_no_convention_predicts_is_unexpected():
    rows = _rows(run_pair(TORCH, _OffByOne(convention("keras.layers.BatchNormalization")), Mode.TRAIN_FORWARD, 10, 3))
    assert rows["y"].verdict == UNEXPECTED


def test_the_matrix_pairs_one_backend_per_convention_and_says_what_cannot_be_compared():
    results = run_matrix([TORCH, IdealBackend(convention("torch.nn.functional.batch_norm")), KERAS,
                          IdealBackend(convention("torch.nn.BatchNorm1d"))], examples=3, run_seed=0)
    pairs = {(r.source, r.target) for r in results}
    assert len(pairs) == 3  # three conventions: three unordered pairs
    assert all(r.status in ("ran", "not comparable") for r in results)
