"""The oracle stays accurate when gamma is so small that outputs are subnormal.

Found through PyTorch: with gamma = 9.8e-307 the oracle used to form gamma * s'(V) first, a subnormal
coefficient with ~38 significant bits, and lost 1,300 subnormal units in dx. gamma now multiplies last,
so y(gamma) and dx(gamma) are gamma * y(1) and gamma * dx(1) rounded once.
"""

import numpy as np
import pytest

from bnconf.spec import RunningStats, backward_eval, backward_train, convention, forward_eval, forward_train

TORCH = convention("torch.nn.functional.batch_norm")
TINY = 2.0**-1074  # the smallest float64 subnormal


@pytest.mark.parametrize("gamma", [9.8104132e-307, 2.2250738585072014e-308, 1e-320])
def test_outputs_scale_with_a_subnormal_producing_gamma_to_within_one_rounding(gamma):
    x, dy = np.array([[-37.00247693], [99.4078692]]), np.array([[0.12573022], [-0.13210486]])
    running = RunningStats(np.array([3.0]), np.array([2.0]))
    kw = dict(convention=TORCH, axis=1, eps=1e-5)
    pairs = [
        (forward_train(x, [gamma], [0.0], **kw).y, forward_train(x, [1.0], [0.0], **kw).y),
        (forward_eval(x, [gamma], [0.0], running, **kw), forward_eval(x, [1.0], [0.0], running, **kw)),
        (backward_train(dy, x, [gamma], **kw).dx, backward_train(dy, x, [1.0], **kw).dx),
        (backward_eval(dy, x, [gamma], running, **kw).dx, backward_eval(dy, x, [1.0], running, **kw).dx),
    ]
    for scaled, unit in pairs:
        exact = unit * gamma  # gamma * (a normal float64 result): one rounding from the true product
        assert np.all(np.abs(scaled - exact) <= TINY + 2 * 2.0**-53 * np.abs(exact))
