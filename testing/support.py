"""What the suite's tests share: the run's selection (backends, devices, dtypes, records, examples), the records
that apply to a backend, failure messages with their replay line, and the stale-record summary.

Imported by the test modules (and by the plugin only when a `--bnconf-*` option is used): it imports bnconf's
machinery and NumPy, and the selected backends' frameworks when it loads them.
"""

import os
from dataclasses import dataclass

import pytest

from bnconf.adapters.protocol import unavailable
from bnconf.conformance import selection

REPRO_DIR = "bnconf-repro"  # where failing cases are saved, under the working folder (env BNCONF_REPRO_DIR)


@dataclass
class Selection:
    targets: list[str]  # the --bnconf-backend targets; [] for the built-ins and installed entry points
    backends: list
    unavailable: list  # registry.Unavailable: families that did not load (never with targets)
    devices: list[str]
    dtypes: list[str]
    records: list[str]  # the --bnconf-records targets
    examples: int | None  # --bnconf-examples

    def cells(self):
        return selection.cells(self.backends, self.devices, self.dtypes)

    def backend_devices(self, backend) -> list[str]:
        return [d for d in backend.devices if not self.devices or d in self.devices]

    def first_device(self, backend) -> str | None:
        """The first selected device of `backend` that runs now; else its first selected one (skipped with the
        reason); None when the run selects none of its devices."""
        devices = self.backend_devices(backend)
        return next((d for d in devices if not unavailable(backend, d)), devices[0] if devices else None)


_SELECTION = pytest.StashKey[Selection]()
_SEEN: set[str] = set()  # ids of known discrepancies a conformance case needed
_RAN: dict[str, object] = {}  # name -> backend, those whose conformance cells ran
_APPLIES: dict[str, dict] = {}  # from xdist workers: backend name -> the ids of its known discrepancies (keys)


def _option(config, name: str) -> list[str]:
    return list(config.getoption(name, default=None) or [])


def selected(config) -> Selection:
    """The run's selection, loaded once per session (raises TargetError/BackendError, both ValueErrors, for a bad
    target; the plugin turns them into a usage error)."""
    try:
        return config.stash[_SELECTION]
    except KeyError:
        pass
    targets = selection.choice(_option(config, "bnconf_backend"), "backend")
    found, missing = selection.backends(targets)
    records = selection.choice(_option(config, "bnconf_records"), "record")
    from bnconf.conformance.user_records import prepare_records

    prepare_records(found, records)  # the backends' own records checked, as `bnconf validate` does; files attached
    config.stash[_SELECTION] = s = Selection(
        targets, found, missing, selection.choice(_option(config, "bnconf_device"), "device"),
        selection.choice(_option(config, "bnconf_dtype"), "dtype"), records, config.getoption("bnconf_examples", default=None))
    return s


def header(config) -> str:
    s = selected(config)
    what = ", ".join(s.targets) if s.targets else "built-ins and installed entry points"
    narrowed = "".join(f"; {k} {', '.join(v)}" for k, v in (("devices", s.devices), ("dtypes", s.dtypes), ("records", s.records)) if v)
    return f"bnconf: backends {what} ({len(s.backends)} loaded){narrowed}"


def examples(config, default_share: int, least: int) -> int:
    """--bnconf-examples, else a share of the Hypothesis profile's max_examples (at least `least`)."""
    from hypothesis import settings

    given = config.getoption("bnconf_examples", default=None)
    return given or max(least, settings().max_examples // default_share)


def hypothesis_settings(max_examples: int, **kw):
    """The profile's settings with what backends need: no deadline (frameworks compile on first use), no
    too-slow health check, the failing example's blob printed."""
    from hypothesis import HealthCheck, settings

    checks = set(settings().suppress_health_check) | {HealthCheck.too_slow, HealthCheck.data_too_large}
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=list(checks), print_blob=True, **kw)


def keyed(test, nodeid: str):
    """Give a Hypothesis test built inside a parametrised pytest test its own example-database key."""
    inner = getattr(getattr(test, "hypothesis", None), "inner_test", None)
    if inner is not None:
        inner._hypothesis_internal_add_digest = nodeid.encode()
    return test


# ---------------------------------------------------------------- records


def discrepancies_for(backend) -> tuple:
    """The known discrepancies that apply to `backend`: its own, those attached by --bnconf-records, bnconf's."""
    from bnconf.conformance.known import discrepancies_for

    return tuple(discrepancies_for(backend))


def edge_records_for(backend) -> tuple:
    """The recorded edge behaviours that apply to `backend`: its own, those attached by --bnconf-records, bnconf's."""
    from bnconf.conformance.known import edge_records_for

    return tuple(edge_records_for(backend))


def ran(backend) -> None:
    _RAN[backend.name] = backend


def needed(discrepancy_id: str) -> None:
    _SEEN.add(discrepancy_id)


def stale_discrepancies() -> list[str]:
    """Known discrepancies of backends whose cells ran that no case needed (a cell's few examples may miss a rare
    case: `bnconf report`'s per-entry counts say more)."""
    stale = {}
    for backend in _RAN.values():
        for d in discrepancies_for(backend):
            if d.id not in _SEEN:
                stale[d.id] = None
    return list(stale)


def worker_output() -> dict:
    """What a pytest-xdist worker tells the controller: per backend whose cells ran, the ids of its known
    discrepancies, and the ids a case needed."""
    return {"applies": {name: [d.id for d in discrepancies_for(b)] for name, b in _RAN.items()}, "needed": sorted(_SEEN)}


def absorb(output: dict) -> None:
    """The controller's side: a worker's `worker_output`, counted as if its cases had run here."""
    for name, ids in output.get("applies", {}).items():
        _APPLIES.setdefault(name, {}).update(dict.fromkeys(ids))
    _SEEN.update(output.get("needed", ()))


def summary_lines() -> list[str]:
    """The stale-record line, over this process's cases and every xdist worker's (`absorb`)."""
    if not _RAN and not _APPLIES:
        return []
    stale = dict.fromkeys(stale_discrepancies())
    stale.update(dict.fromkeys(i for ids in _APPLIES.values() for i in ids if i not in _SEEN))
    return [f"bnconf: known discrepancies no case needed in this run (stale?): {', '.join(stale)}"] if stale else []


# ---------------------------------------------------------------- failures


def skip_unless_runs(backend, device: str | None) -> None:
    if device is None:
        pytest.skip(f"{backend.name}: the run selects none of its devices ({', '.join(backend.devices)})")
    reason = unavailable(backend, device)
    if reason:
        pytest.skip(reason)


def replay(backend, mode, inputs, dtype: str, device: str) -> str:
    """Save the case and return the line that replays it (or why it could not be saved)."""
    from bnconf.conformance.repro import replay_line, save_case

    try:
        folder = save_case(os.environ.get("BNCONF_REPRO_DIR", REPRO_DIR), backend, mode, inputs, dtype, device)
    except OSError as e:
        return f"(the case could not be saved: {e.strerror or e})"
    return replay_line(folder, backend)


def is_final() -> bool:
    """Hypothesis is running the example it reports (shrunk): save it, once."""
    from hypothesis.control import current_build_context

    try:
        return current_build_context().is_final
    except Exception:  # noqa: BLE001 - outside a Hypothesis test: a plain call reports what it finds
        return True


__all__ = ["Selection", "unavailable", "discrepancies_for", "edge_records_for", "examples", "header",
           "hypothesis_settings", "is_final", "keyed", "needed", "ran", "replay", "selected", "skip_unless_runs",
           "stale_discrepancies", "summary_lines"]
