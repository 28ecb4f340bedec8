"""Bad input to the spec: a clear error naming the problem, never a deep traceback or a silent answer."""

import numpy as np
import pytest

from bnconf.spec import RunningStats, backward_train, convention, forward_eval, forward_train

TORCH = convention("torch.nn.BatchNorm2d")
X = np.ones((4, 3, 2))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: forward_train(X, gamma=np.ones(2), convention=TORCH, axis=1, eps=1e-5), ValueError, r"gamma has shape \(2,\), expected \(3,\): one value per channel of x \(axis 1 of shape \(4, 3, 2\)\)"),
        (lambda: forward_train(X, convention=TORCH, axis=3, eps=1e-5), ValueError, "channel axis 3 is out of range"),
        (lambda: forward_train(X, convention=TORCH, axis=1.0, eps=1e-5), TypeError, "channel axis must be an integer"),
        (lambda: forward_train(X, convention=TORCH, axis=1, eps=-1.0), ValueError, "eps must be a finite number >= 0"),
        (lambda: forward_train(X, convention=TORCH, axis=1, eps="1e-5"), TypeError, "eps must be a number"),
        (lambda: forward_train(X.astype(complex), convention=TORCH, axis=1, eps=1e-5), TypeError, "x must hold real numbers"),
        (lambda: forward_train(np.ones(4), convention=TORCH, axis=0, eps=1e-5), ValueError, "rank 2 or more"),
        (lambda: forward_train(np.ones((4, 0)), convention=TORCH, axis=1, eps=1e-5), ValueError, "x has no channels"),
        (lambda: forward_train(X, convention="torch.nn.BatchNorm2d", axis=1, eps=1e-5), TypeError, "spec.Convention record"),
        (lambda: forward_train(X, running=(np.zeros(3), np.ones(3)), convention=TORCH, axis=1, eps=1e-5, momentum=0.1), TypeError, "RunningStats"),
        (lambda: forward_train(X, running=RunningStats(np.zeros(3), np.ones(3)), convention=convention("keras.layers.BatchNormalization"), axis=1, eps=1e-5, momentum=None), ValueError, "needs a numeric momentum"),
        (lambda: forward_train(X, running=RunningStats(np.zeros(3), np.ones(3)), convention=convention("tf.nn.batch_normalization"), axis=1, eps=1e-5), ValueError, "keeps no running statistics"),
        (lambda: forward_eval(X, convention=TORCH, axis=1, eps=1e-5), ValueError, "eval mode needs running statistics"),
        (lambda: backward_train(np.ones((4, 3)), X, convention=TORCH, axis=1, eps=1e-5), ValueError, r"dy has shape \(4, 3\), expected \(4, 3, 2\): the shape of x"),
    ],
)
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()
