"""check_request: every adapter's first line, naming what in a request its backend cannot take."""

import numpy as np
import pytest

from bnconf.adapters.example_numpy import BACKEND
from bnconf.adapters.protocol import Request, check_request
from bnconf.spec import InputError, Mode

X = np.ones((4, 3))


@pytest.mark.parametrize("mode, changes, message", [
    (Mode.TRAIN_FORWARD, dict(dtype="float16"), "dtype 'float16' is not supported"),
    (Mode.TRAIN_FORWARD, dict(device="cuda"), "device 'cuda' is not supported"),
    (Mode.TRAIN_FORWARD, dict(x=np.ones(4)), "input rank 1 is not supported"),
    (Mode.TRAIN_FORWARD, dict(axis=0), "channel axis 0 is not supported"),
    (Mode.TRAIN_FORWARD, dict(axis=5), "channel axis 5 is not supported"),
    (Mode.TRAIN_FORWARD, dict(gamma=np.ones(3)), "gamma and beta must be given together"),
    (Mode.TRAIN_FORWARD, dict(running_mean=np.zeros(3)), "running_mean and running_var must be given together"),
    (Mode.TRAIN_BACKWARD, dict(), "needs dy"),
    (Mode.TRAIN_BACKWARD, dict(dy=np.ones((4, 2))), r"dy has shape \(4, 2\), expected \(4, 3\): the shape of x"),
    (Mode.EVAL_FORWARD, dict(), "normalizes with running statistics"),
])
def test_a_request_the_backend_cannot_take_is_named(mode, changes, message):
    r = Request(**{**dict(x=X, axis=1, eps=1e-5, dtype="float32"), **changes})
    with pytest.raises(ValueError, match=message):
        check_request(BACKEND, mode, r)


def test_a_request_the_backend_can_take_passes():
    check_request(BACKEND, Mode.EVAL_FORWARD, Request(x=X, axis=-1, eps=1e-5, dtype="float64",
                                                      running_mean=np.zeros(3), running_var=np.ones(3)))


@pytest.mark.parametrize("changes, message", [
    (dict(gamma=np.ones(2), beta=np.zeros(3)), "example.numpy: gamma has shape (2,), expected (3,): one value per channel "
                                                "of x (axis 1 of shape (4, 3))"),
    (dict(running_mean=np.zeros(3), running_var=np.ones(4)), "running_var has shape (4,), expected (3,)"),
    (dict(dtype="float8"), "dtype 'float8' is not a floating-point format bnconf knows: expected one of float64"),
    (dict(dtype="int32"), "dtype 'int32' is not a floating-point format bnconf knows"),
    (dict(eps=float("nan")), "eps must be a finite number >= 0, got nan"),
    (dict(momentum=float("inf")), "momentum must be a finite number, got inf"),
    (dict(axis=1.0), "the channel axis must be an integer, got 1.0"),
    (dict(x=np.ones((4, 3), dtype=complex)), "x must hold real numbers, got dtype complex128"),
])
def test_check_request_names_bad_input(changes, message):
    r = Request(**{**dict(x=np.ones((4, 3)), axis=1, eps=1e-5, dtype="float32", momentum=0.1), **changes})
    with pytest.raises(InputError) as e:
        check_request(BACKEND, Mode.TRAIN_FORWARD, r)
    assert message in str(e.value)
