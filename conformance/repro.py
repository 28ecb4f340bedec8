"""A failing case as a small standalone folder, and replaying it.

    <folder>/case.json    backend target and name, mode, dtype, device, axis, eps, momentum, versions
    <folder>/inputs.npz   x, gamma, beta, running mean/var and count, dy (those present)
    <folder>/repro.py     `python repro.py` reruns the case and prints each quantity's comparison

The folder can be attached to an upstream bug report; `bnconf replay <folder>` does what repro.py does.
"""

import hashlib
import json
import platform
import zipfile
from pathlib import Path

import numpy as np

from ..adapters.registry import load, origin
from ..spec import Inputs, Mode, RunningStats
from .engine import assess

SCRIPT = '''"""Replays a bnconf conformance failure (needs bnconf and the backend's framework installed)."""
from pathlib import Path

from bnconf.conformance.repro import print_replay

raise SystemExit(print_replay(Path(__file__).parent))
'''


def save_case(root, backend, mode: Mode, inputs: Inputs, dtype: str, device: str) -> Path:
    arrays = {k: v for k, v in {"x": inputs.x, "gamma": inputs.gamma, "beta": inputs.beta, "dy": inputs.dy}.items() if v is not None}
    if inputs.running is not None:
        arrays.update(running_mean=inputs.running.mean, running_var=inputs.running.var)
    case = {
        "backend": backend.name, "target": origin(backend), "mode": mode.value, "dtype": dtype, "device": device,
        "axis": inputs.axis, "eps": inputs.eps, "momentum": inputs.momentum,
        "running_count": None if inputs.running is None else inputs.running.count,
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     **(backend.versions() if callable(getattr(backend, "versions", None)) else {})},
    }
    digest = hashlib.sha256(json.dumps(case, sort_keys=True).encode() + b"".join(np.asarray(a).tobytes() for a in arrays.values()))
    folder = Path(root) / f"{backend.name.replace('/', '_')}-{mode.value}-{dtype}-{digest.hexdigest()[:10]}"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "inputs.npz", **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
    (folder / "case.json").write_text(json.dumps(case, indent=1, sort_keys=True))
    (folder / "repro.py").write_text(SCRIPT)
    return folder


class CaseError(ValueError):
    """A folder that is not a saved case, or a saved case that cannot be read back."""


def load_case(folder):
    """(backend, mode, inputs, dtype, device) of a saved case; CaseError when `folder` is not one."""
    folder = Path(folder)
    again = "rerun the failing conformance test to save the case again"
    if not folder.is_dir():
        raise CaseError(f"no folder {folder}; give a folder a failing conformance test saved (bnconf-repro/...)")
    if not (folder / "case.json").is_file():
        raise CaseError(f"{folder} is not a saved case (no case.json there); give a folder a failing conformance "
                        "test saved (bnconf-repro/...)")
    try:
        case = json.loads((folder / "case.json").read_text())
        arrays = dict(np.load(folder / "inputs.npz"))
        target, name, mode = case["target"], case["backend"], Mode(case["mode"])
        running = None
        if "running_mean" in arrays:
            running = RunningStats(arrays["running_mean"], arrays["running_var"], case["running_count"])
        inputs = Inputs(x=arrays["x"], axis=case["axis"], eps=case["eps"], gamma=arrays.get("gamma"),
                        beta=arrays.get("beta"), running=running, momentum=case["momentum"], dy=arrays.get("dy"))
        dtype, device = case["dtype"], case["device"]
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as e:
        raise CaseError(f"{folder} holds a corrupt case ({type(e).__name__}: {e}); {again}") from e
    if not isinstance(target, str):
        raise CaseError(f"{folder}/case.json does not say where backend {name!r} comes from (no target); "
                        "save cases of backends loaded by bnconf.adapters.registry.load")
    candidates = [b for b in load(target) if b.name == name]
    if not candidates:
        raise CaseError(f"{target} no longer provides a backend named {name!r}; replay with the version that "
                        f"saved it ({case.get('versions')}) or {again}")
    return candidates[0], mode, inputs, dtype, device


def print_replay(folder) -> int:
    """Rerun the case and print every quantity's comparison; 1 if a quantity still fails, else 0."""
    backend, mode, inputs, dtype, device = load_case(folder)
    a = assess(backend, mode, inputs, dtype, device)
    print(f"{backend.name} {device} {dtype} {mode.value}")
    for q, c in a.declared.items():
        print(f"  {q}: {c.verdict.value} {c.detail} max error/bound {c.max_ratio:.3g}, {c.max_ulp:.3g} ulps, worst at "
              f"{c.worst_index}: observed {c.observed!r}, expected {c.expected!r}, bound {c.bound!r}")
    if a.discrepancy:
        print(f"  covered by known discrepancy {a.discrepancy.id}")
    problems = a.problems()
    print("still fails: " + ", ".join(problems) if problems else "conforms now")
    return 1 if problems else 0
