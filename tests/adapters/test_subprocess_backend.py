"""The child-process proxy (adapters/subprocess_backend.py) with NumPy backends: no framework needed."""

import numpy as np
import pytest

from bnconf.adapters import example_numpy
from bnconf.adapters.protocol import Request, check_backend, declared_precision
from bnconf.adapters.subprocess_backend import SubprocessBackend
from bnconf.spec import Mode

CRASHY = '''
import os
from bnconf.adapters.example_numpy import NumpyBatchNorm

class Crashy(NumpyBatchNorm):
    """example.numpy, except that eps 13 ends the process and a negative eps raises."""
    name = "crashy.numpy"

    def run(self, mode, r):
        if r.eps == 13.0:
            os._exit(7)
        if r.eps < 0:
            raise ValueError(f"eps must be positive, got {r.eps}")
        return super().run(mode, r)

BACKEND = Crashy()
'''


def _request(eps: float = 1e-5) -> Request:
    x = np.array([[1.0, 2.0], [3.0, 5.0], [4.0, -1.0]])
    return Request(x=x, axis=1, eps=eps, dtype="float64", momentum=0.1, running_mean=np.zeros(2), running_var=np.ones(2))


@pytest.fixture(scope="module")
def crashy(tmp_path_factory):
    path = tmp_path_factory.mktemp("crashy") / "crashy.py"
    path.write_text(CRASHY)
    return SubprocessBackend(f"{path}:BACKEND")


def test_the_proxy_returns_what_the_backend_returns_in_process():
    proxy = SubprocessBackend("bnconf.adapters.example_numpy:BACKEND")
    for mode in (Mode.TRAIN_FORWARD, Mode.EVAL_FORWARD):
        remote, local = proxy.run(mode, _request()), example_numpy.BACKEND.run(mode, _request())
        assert remote.quantities().keys() == local.quantities().keys()
        for q, v in local.quantities().items():
            np.testing.assert_array_equal(remote.quantities()[q], v)


@pytest.mark.parametrize("declared_here", [False, True], ids=["metadata from the child", "metadata declared here"])
def test_the_proxy_has_the_remote_backends_metadata(declared_here):
    local = example_numpy.BACKEND
    proxy = SubprocessBackend("bnconf.adapters.example_numpy:BACKEND", local=local if declared_here else None)
    check_backend(proxy)
    for attr in ("name", "convention", "modes", "dtypes", "devices"):
        assert getattr(proxy, attr) == getattr(local, attr)
    assert proxy.ranks == local.convention.ranks and proxy.channel_axes == (local.convention.channel_axis,)
    for dtype in local.dtypes:
        assert proxy.precision(dtype, "cpu") == declared_precision(local, dtype, "cpu")
    assert proxy.unavailable("cpu") is None and proxy.versions() == {}


def test_an_exception_in_the_child_is_raised_here_with_its_message(crashy):
    with pytest.raises(ValueError, match="eps must be positive, got -1.0") as info:
        crashy.run(Mode.EVAL_FORWARD, _request(eps=-1.0))
    assert any("raised in the child process" in note for note in info.value.__notes__)
    assert crashy.run(Mode.EVAL_FORWARD, _request()).y is not None  # the child is still serving


def test_a_child_that_dies_is_a_clear_error_and_the_next_call_starts_a_new_one(crashy):
    crashy.run(Mode.EVAL_FORWARD, _request())
    with pytest.raises(RuntimeError, match=r"crashy.*died with exit code 7"):
        crashy.run(Mode.EVAL_FORWARD, _request(eps=13.0))
    assert crashy.run(Mode.EVAL_FORWARD, _request()).y is not None


def test_an_unknown_backend_name_is_an_error_naming_the_ones_there():
    proxy = SubprocessBackend("bnconf.adapters.example_numpy:BACKEND", name="nope", local=example_numpy.BACKEND)
    with pytest.raises(ValueError, match="no backend named 'nope'.*example.numpy"):
        proxy.run(Mode.EVAL_FORWARD, _request())
