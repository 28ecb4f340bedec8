"""Bad input to the spec's functions (the oracle, `expected`): spec.InputError, a ValueError and a TypeError, whose
message names the argument, what was given and what is expected; never a deep traceback or a silent answer.

The command line's exit-2 errors are tested in tests/test_cli_bad_input.py."""

import numpy as np
import pytest

from bnconf.spec import (
    InputError,
    Inputs,
    Mode,
    RunningStats,
    backward_eval,
    backward_train,
    batch_stats,
    convention,
    expected,
    float_format,
    forward_eval,
    forward_train,
    precision_for,
    update_running_stats,
    update_weight,
)

TORCH = convention("torch.nn.BatchNorm2d")
X = np.ones((2, 4, 5))
X432 = np.ones((4, 3, 2))
RUNNING = RunningStats(np.zeros(4), np.ones(4))
COMMON = dict(convention=TORCH, axis=1, eps=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda: forward_train(X, np.ones(3), np.zeros(4), **COMMON),
     "gamma has shape (3,), expected (4,): one value per channel of x (axis 1 of shape (2, 4, 5))"),
    (lambda: forward_train(X, np.ones(4), np.zeros((4, 1)), **COMMON),
     "beta has shape (4, 1), expected (4,): one value per channel of x (axis 1 of shape (2, 4, 5))"),
    (lambda: forward_train(X, running=RunningStats(np.zeros(5), np.ones(4)), momentum=0.1, **COMMON),
     "running.mean has shape (5,), expected (4,): one value per channel of x (axis 1 of shape (2, 4, 5))"),
    (lambda: forward_eval(X, running=RunningStats(np.zeros(4), np.ones(2)), **COMMON),
     "running.var has shape (2,), expected (4,)"),
    (lambda: forward_eval(X, running=RunningStats(np.zeros(4), np.ones(4), -1), **COMMON),
     "running.count (the batches the running statistics have seen) must be an integer >= 0, got -1"),
    (lambda: backward_train(np.ones((2, 4)), X, **COMMON), "dy has shape (2, 4), expected (2, 4, 5): the shape of x"),
    (lambda: backward_eval(np.ones_like(X), X, np.ones(5), RUNNING, **COMMON), "gamma has shape (5,), expected (4,)"),
    (lambda: forward_train(X, convention=TORCH, axis=3, eps=1e-5),
     "channel axis 3 is out of range for x of shape (2, 4, 5): expected an integer from -3 to 2"),
    (lambda: forward_train(X, convention=TORCH, axis=-4, eps=1e-5), "channel axis -4 is out of range"),
    (lambda: batch_stats(X, axis=1.5), "the channel axis must be an integer, got 1.5 (float)"),
    (lambda: batch_stats(np.ones(3), axis=0), "x has shape (3,), expected rank 2 or more"),
    (lambda: batch_stats(X.astype(np.complex64), axis=1), "x must hold real numbers, got dtype complex64"),
    (lambda: batch_stats(X.astype(object), axis=1), "x must hold real numbers, got dtype object"),
    (lambda: forward_train(X, convention=TORCH, axis=1, eps=-1e-5), "eps must be a finite number >= 0, got -1e-05"),
    (lambda: forward_train(X, convention=TORCH, axis=1, eps=float("nan")), "eps must be a finite number >= 0, got nan"),
    (lambda: forward_eval(X, running=RUNNING, convention=TORCH, axis=1, eps=float("inf")), "got inf"),
    (lambda: forward_train(X, convention=TORCH, axis=1, eps=None), "eps must be a number, got None (NoneType)"),
    (lambda: update_weight(TORCH, float("nan"), 1), "momentum must be a finite number, got nan"),
    (lambda: update_running_stats(RunningStats(np.zeros(3), np.ones(3)), batch_stats(X, 1), TORCH, 0.1),
     "running.mean has shape (3,), expected (4,): one value per channel"),
    (lambda: float_format("int8"), "unsupported dtype 'int8': bnconf knows float64"),
])
def test_the_oracle_names_bad_input(call, message):
    with pytest.raises(InputError) as e:
        call()
    assert message in str(e.value)


def test_input_error_is_a_value_error_and_a_type_error():
    assert issubclass(InputError, ValueError) and issubclass(InputError, TypeError)


@pytest.mark.parametrize("changes, mode, message", [
    (dict(gamma=np.ones(3), beta=np.zeros(4)), Mode.TRAIN_FORWARD, "gamma has shape (3,), expected (4,)"),
    (dict(running=RunningStats(np.zeros(4), np.ones(6))), Mode.EVAL_FORWARD, "running.var has shape (6,), expected (4,)"),
    (dict(dy=np.ones((2, 5, 4))), Mode.TRAIN_BACKWARD, "dy has shape (2, 5, 4), expected (2, 4, 5)"),
    (dict(axis=7), Mode.TRAIN_FORWARD, "channel axis 7 is out of range for x of shape (2, 4, 5)"),
    (dict(eps=-0.5), Mode.TRAIN_FORWARD, "eps must be a finite number >= 0, got -0.5"),
    (dict(), "sideways", "mode 'sideways' is not a spec.Mode: expected one of train_forward"),
    (dict(), Mode.TRAIN_BACKWARD, "train_backward needs an upstream gradient"),
])
def test_expected_names_bad_inputs(changes, mode, message):
    inputs = Inputs(**{**dict(x=X, axis=1, eps=1e-5, momentum=0.1), **changes})
    with pytest.raises(InputError) as e:
        expected(mode, inputs, TORCH, precision_for("float32"))
    assert message in str(e.value)



@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: forward_train(X432, gamma=np.ones(2), convention=TORCH, axis=1, eps=1e-5), r"gamma has shape \(2,\), expected \(3,\): one value per channel of x \(axis 1 of shape \(4, 3, 2\)\)"),
        (lambda: forward_train(X432, convention=TORCH, axis=3, eps=1e-5), "channel axis 3 is out of range"),
        (lambda: forward_train(X432, convention=TORCH, axis=1.0, eps=1e-5), "channel axis must be an integer"),
        (lambda: forward_train(X432, convention=TORCH, axis=1, eps=-1.0), "eps must be a finite number >= 0"),
        (lambda: forward_train(X432, convention=TORCH, axis=1, eps="1e-5"), "eps must be a number"),
        (lambda: forward_train(X432.astype(complex), convention=TORCH, axis=1, eps=1e-5), "x must hold real numbers"),
        (lambda: forward_train(np.ones(4), convention=TORCH, axis=0, eps=1e-5), "rank 2 or more"),
        (lambda: forward_train(np.ones((4, 0)), convention=TORCH, axis=1, eps=1e-5), "x has no channels"),
        (lambda: forward_train(X432, convention="torch.nn.BatchNorm2d", axis=1, eps=1e-5), "spec.Convention record"),
        (lambda: forward_train(X432, running=(np.zeros(3), np.ones(3)), convention=TORCH, axis=1, eps=1e-5, momentum=0.1), "RunningStats"),
        (lambda: forward_train(X432, running=RunningStats(np.zeros(3), np.ones(3)), convention=convention("keras.layers.BatchNormalization"), axis=1, eps=1e-5, momentum=None), "needs a numeric momentum"),
        (lambda: forward_train(X432, running=RunningStats(np.zeros(3), np.ones(3)), convention=convention("tf.nn.batch_normalization"), axis=1, eps=1e-5), "keeps no running statistics"),
        (lambda: forward_eval(X432, convention=TORCH, axis=1, eps=1e-5), "eval mode needs running statistics"),
        (lambda: backward_train(np.ones((4, 3)), X432, convention=TORCH, axis=1, eps=1e-5), r"dy has shape \(4, 3\), expected \(4, 3, 2\): the shape of x"),
    ],
)
def test_each_bad_argument_is_an_input_error_that_names_it(call, message):
    with pytest.raises(InputError, match=message):
        call()
