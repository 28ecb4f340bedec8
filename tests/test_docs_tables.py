"""SPEC.md §2.1 and README's adapters table are generated from the family entries (adapters/families.py), the
convention records and the known-discrepancy registries; these tests keep the documents, the entries and the
adapters in step."""

import subprocess
import sys

import pytest

from bnconf.adapters import families, registry
from bnconf.adapters.families import ALL_DTYPES, FAMILIES, RECORDED, builtin_targets
from bnconf.adapters.registry import TargetError, load
from bnconf.conformance import known
from bnconf.conformance.known import DISCREPANCIES, EDGE_RECORDS
from bnconf.reports import docs_tables
from bnconf.reports.docs_tables import ADAPTERS_TABLE, CONVENTION_TABLE, END, REGENERATE, REPLICA_TABLE, MarkerError
from bnconf.spec.conventions import CONVENTIONS


def test_readme_and_spec_hold_the_generated_tables():
    diffs = docs_tables.stale()
    assert not diffs, (f"{', '.join(diffs)} differ from the family entries and records; regenerate with\n\n"
                       f"    {REGENERATE}\n\n" + "\n".join(diffs.values()))


def test_every_convention_record_has_a_row_and_every_row_a_record():
    shown = [name for f in RECORDED for row in f.rows for name in row.conventions]
    assert set(shown) == set(CONVENTIONS), f"without a §2.1 row: {sorted(set(CONVENTIONS) - set(shown))}"
    for f in RECORDED:
        for row in f.rows:
            assert set(row.conventions) <= set(f.conventions), (f.name, row.conventions)
        assert set(f.conventions) <= set(CONVENTIONS), f.name


def test_records_merged_into_one_row_agree_on_every_column_shown_once():
    for f in RECORDED:
        for row in f.rows:
            cells = [docs_tables.convention_cells(CONVENTIONS[name]) for name in row.conventions]
            assert all(c == cells[0] for c in cells), (row.conventions, cells)


def test_builtin_is_derived_from_the_families_and_keeps_its_keys():
    assert registry.BUILTIN == builtin_targets()
    assert list(registry.BUILTIN) == ["torch", "tensorflow", "tensorflow-layers", "keras", "jax", "cuda-kernel"]
    assert all(f.target and f.registry and f.extra for f in FAMILIES)
    assert families.ONNX.target is None and families.ONNX not in FAMILIES


def test_family_entries_are_consistent():
    names = [f.name for f in RECORDED]
    assert len(names) == len(set(names))
    backends = [b for f in FAMILIES for b in f.backend_names]
    assert len(backends) == len(set(backends)), "a backend name in two families"
    for f in FAMILIES:
        assert f.rows and f.conventions and f.backend_names and f.found and f.apis, f.name
        assert f.dtypes and set(f.dtypes) <= set(ALL_DTYPES), f.name
        assert f.known is None or hasattr(known, f.known), f.name
    with pytest.raises(ValueError, match="known: torch"):
        families.family("no-such-family")
    assert families.family("equinox").conventions == ("equinox.nn.BatchNorm",)


def test_every_record_belongs_to_a_family_and_lives_in_its_module():
    """A record whose pattern names no built-in backend is dead; a known discrepancy sits in the module of
    the family it covers (conformance/known/<family.known>.py)."""
    for r in (*DISCREPANCIES, *EDGE_RECORDS):
        assert any(docs_tables.records_of(f, (r,)) for f in FAMILIES), f"{r.id}: {r.backends!r} covers no backend"
    for f in FAMILIES:
        module = getattr(known, f.known).ENTRIES if f.known else ()
        for r in docs_tables.records_of(f, DISCREPANCIES):
            assert r in module, f"{r.id} covers {f.name} but is not in conformance/known/{f.known}.py"


def test_importing_the_entries_and_the_generator_imports_no_framework():
    code = ("import sys, bnconf.adapters.families, bnconf.reports.docs_tables, bnconf.adapters.registry;"
            "print(sorted(m for m in ('torch', 'tensorflow', 'jax', 'keras', 'flax', 'haiku', 'equinox', 'cupy')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", list(builtin_targets()))
def test_the_entries_describe_the_backends_their_target_loads(name):
    """Names, declared conventions and dtypes stated in families.py are what the adapters really have."""
    target, _ = builtin_targets()[name]
    try:
        backends = load(target)
    except TargetError as e:
        pytest.skip(f"{name}: {e}")
    entries = [f for f in FAMILIES if f.registry == name]
    assert sorted(b.name for b in backends) == sorted(n for f in entries for n in f.backend_names)
    for f in entries:
        mine = [b for b in backends if b.name in f.backend_names]
        assert {b.convention.name for b in mine} == set(f.conventions), f.name
        assert {d for b in mine for d in b.dtypes} == set(f.dtypes), f.name


# ---------------------------------------------------------------------------------------- the generator


def _documents(tmp_path, spec_body="old\n", readme_body="old\n"):
    (tmp_path / "spec").mkdir()
    spec = tmp_path / "spec" / "SPEC.md"
    readme = tmp_path / "README.md"
    spec.write_text(f"# spec\n\n### 2.1\n\n{CONVENTION_TABLE.begin}\n{spec_body}{END}\n\nafter\n")
    readme.write_text(f"# readme\n{ADAPTERS_TABLE.begin}\n{readme_body}{END}\n{REPLICA_TABLE.begin}\n{END}\ntail\n")
    return spec, readme


def test_write_rewrites_only_the_generated_spans(tmp_path):
    spec, readme = _documents(tmp_path)
    assert set(docs_tables.stale(tmp_path)) == {"spec/SPEC.md", "README.md"}
    assert docs_tables.write(tmp_path) == ["spec/SPEC.md", "README.md"]
    assert docs_tables.stale(tmp_path) == {}
    assert docs_tables.write(tmp_path) == []
    text = spec.read_text()
    assert text.startswith("# spec\n\n### 2.1\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert docs_tables.convention_table() in text
    assert readme.read_text() == (f"# readme\n{ADAPTERS_TABLE.begin}\n{docs_tables.adapters_table()}{END}\n"
                                  f"{REPLICA_TABLE.begin}\n{docs_tables.replica_table()}{END}\ntail\n")


def test_a_missing_or_doubled_marker_is_an_error(tmp_path):
    spec, readme = _documents(tmp_path)
    readme.write_text("no markers\n")
    with pytest.raises(MarkerError, match="README.md"):
        docs_tables.stale(tmp_path)
    readme.write_text(f"{ADAPTERS_TABLE.begin}\nno end\n")
    with pytest.raises(MarkerError, match="no "):
        docs_tables.write(tmp_path)


def test_the_command_says_how_to_regenerate(tmp_path, monkeypatch, capsys):
    _documents(tmp_path)
    monkeypatch.setattr(docs_tables, "repository_root", lambda: tmp_path)
    assert docs_tables.main([]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert docs_tables.main(["--write"]) == 0
    assert docs_tables.main([]) == 0


def test_tables_cover_every_family_and_record():
    readme, spec = docs_tables.adapters_table(), docs_tables.convention_table()
    for f in FAMILIES:
        assert f"| {f.title} (`[{f.extra}]`" in readme, f.name
    for name in CONVENTIONS:
        assert f"`{name}`" in spec, name
    assert readme.count("\n") == len(FAMILIES) + 2
