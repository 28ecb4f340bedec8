"""Finding backends: built-ins, entry points, module:attribute and file.py:attribute; clear errors."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnconf.adapters import registry
from bnconf.adapters.protocol import BackendError, check_backend
from bnconf.conformance.engine import assess
from bnconf.spec import Inputs, Mode, RunningStats, Verdict

EXAMPLE = Path(__file__).parents[2] / "adapters" / "example_numpy.py"


@pytest.mark.parametrize("target", [f"{EXAMPLE}:BACKEND", "bnconf.adapters.example_numpy:BACKEND"])
def test_a_backend_loads_from_a_file_or_a_module_and_conforms(target):
    (backend,) = registry.load(target)
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(16, 3, 4))
    dy = np.random.default_rng(1).normal(0.0, 1.0, size=x.shape)  # for the training backward
    inputs = Inputs(x=x, axis=1, eps=1e-5, running=RunningStats.initial(3), momentum=0.1, dy=dy)
    for mode in backend.modes:
        a = assess(backend, mode, inputs, "float32", "cpu")
        assert a.discrepancy is None and all(c.verdict is Verdict.CONFORMS for c in a.declared.values())


@pytest.mark.parametrize(
    "target, message",
    [
        ("no_colon_here", "expected module:attribute"),
        ("bnconf.adapters.example_numpy:NOPE", "has no attribute 'NOPE'"),
        ("bnconf_no_such_module_xyz:BACKEND", "cannot import bnconf_no_such_module_xyz"),
        ("/no/such/file.py:BACKEND", "no file"),
        ("bnconf.spec:CONVENTIONS", "a dict is not a backend"),
    ],
)
def test_a_bad_target_is_named_with_the_reason(target, message):
    with pytest.raises((registry.TargetError, BackendError), match=message):
        registry.load(target)


def test_a_backend_missing_part_of_the_protocol_is_named():
    class Half:
        name = "half"

    with pytest.raises(BackendError, match="has no attribute 'convention'"):
        check_backend(Half())


def test_a_builtin_whose_framework_is_missing_is_unavailable_with_the_reason(monkeypatch, tmp_path):
    adapter = tmp_path / "fake_adapter.py"
    adapter.write_text("import fakeframework_not_installed\nBACKENDS = []\n")
    monkeypatch.setattr(registry, "BUILTIN", {"fake": (f"{adapter}:BACKENDS", "fake")})
    found, missing = registry.discover()
    assert [(m.name, m.reason) for m in missing] == [
        ("fake", "fakeframework_not_installed is not installed (pip install 'bnconf[fake]')")
    ]


def test_the_pytorch_builtins_are_found_when_torch_is_installed():
    pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'bnconf[torch]')")
    found, _ = registry.discover()
    assert {"torch.nn.functional.batch_norm", "torch.nn.BatchNorm2d[channels_last]"} <= {b.name for b in found}


def test_importing_the_registry_imports_no_framework():
    code = ("import sys, bnconf.adapters.registry, bnconf.conformance.known, bnconf.conformance.engine; "
            "print([m for m in ('torch', 'tensorflow', 'jax') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_record_registries_are_built_in_one_place():
    from bnconf.conformance import discrepancies, edge, engine, known

    assert discrepancies.REGISTRY is known.DISCREPANCIES is engine.REGISTRY
    assert edge.edge_records() is known.EDGE_RECORDS
    for registry in (known.DISCREPANCIES, known.EDGE_RECORDS):
        ids = [r.id for r in registry]
        assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


def test_every_lookup_site_asks_which_records_apply_to_the_backend():
    """The battery, edge cases, cross-framework table, inference, stale reporting and isolated workers look records
    up through `known.discrepancies_for` / `edge_records_for` (a backend's own and attached records first), never
    through the built-in registry alone; and a record's unchecked channels are applied in one place."""
    import re

    root = Path(__file__).parents[2] / "conformance"
    for path in root.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"covering\(REGISTRY|registry=REGISTRY\)|edge_records\(\) if records is None", text), path
        if path.name != "records.py":
            assert ".unchecked(" not in text, f"{path}: apply a record with KnownDiscrepancy.apply"
    for name, lookup in (("engine.py", "discrepancies_for(backend)"), ("edge.py", "edge_records_for(backend)"),
                         ("edge.py", "discrepancies_for(run.backend)"), ("crosscheck.py", "discrepancies_for(backend)"),
                         ("inference.py", "discrepancies_for(backend)"), ("battery.py", "sourced_discrepancies_for"),
                         ("isolation.py", "attach_targets(")):
        assert lookup in (root / name).read_text(), (name, lookup)


def test_a_backends_own_records_apply_to_it_alone_before_the_built_ins():
    from dataclasses import replace

    from bnconf.conformance.known import discrepancies_for
    from bnconf.conformance.records import KnownDiscrepancy

    (example,) = registry.load("bnconf.adapters.example_numpy:BACKEND")
    wrong_eps = KnownDiscrepancy(id="mine-eps", backends="example.numpy", quantities=("y",), explanation="e",
                                 evidence="v", adjust=lambda i: replace(i, eps=2 * i.eps))

    class Mine(type(example)):
        known_discrepancies = (wrong_eps,)

    mine = Mine()
    assert discrepancies_for(mine)[0] is wrong_eps and wrong_eps not in discrepancies_for(example)
    x = np.random.default_rng(0).normal(0.0, 1e-3, size=(16, 3))
    inputs = Inputs(x=x, axis=1, eps=1e-5)
    a = assess(mine, Mode.TRAIN_FORWARD, inputs, "float64", "cpu")  # the default registry: the backend's records
    assert a.discrepancy is wrong_eps and "y" in a.problems()  # covered, and checked against the record: it fails
    assert assess(example, Mode.TRAIN_FORWARD, inputs, "float64", "cpu").discrepancy is None


def test_a_registry_of_ones_own_records_is_looked_up_like_the_built_in_one():
    from bnconf.conformance.discrepancies import covering
    from bnconf.conformance.records import KnownDiscrepancy

    own = KnownDiscrepancy(id="own", backends="mine[*]", quantities=("y",), explanation="", evidence="",
                           dtypes=("float16",))
    inputs = Inputs(x=np.zeros((4, 3)), axis=1, eps=1e-5)
    assert covering((own,), "mine[x]", Mode.TRAIN_FORWARD, "float16", "cpu", inputs) is own
    assert covering((own,), "mine[x]", Mode.TRAIN_FORWARD, "float32", "cpu", inputs) is None
    assert covering((own,), "mine.x", Mode.TRAIN_FORWARD, "float16", "cpu", inputs) is None  # brackets are literal
