"""A failing distributed example, saved and replayed.

    folder = save_case(cases_dir, backend, sharded_inputs, split, dtype, device, what)
    python -m bnconf.conformance.replica_repro FOLDER [--backend TARGET]

A folder holds `inputs.npz` (shard_0.., dy_0.., gamma, beta, running_mean, running_var: float64 values exact in
the backend's formats) and `case.json` (backend name, the target it was loaded from, dtype, device, axis, eps,
momentum, running count, split, world size, what failed). Replaying loads the backend (the folder's target
only when it is one of bnconf's built-in replica targets, else the --backend given: a saved folder must not
make bnconf import code it names), runs the step once, prints each quantity's verdict and closes the backend.
Exit status: 0 every quantity accepted, 1 a failure, 2 bad input.
"""

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np

from ..spec.oracle import RunningStats
from ..spec.replicas import ShardedInputs

FORMAT = "bnconf-replica-case/1"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")[:60]


def save_case(root, backend, inputs: ShardedInputs, split, dtype: str, device: str, what: str = "") -> Path:
    """Write the example under `root` and return its folder."""
    from ..adapters.replica_registry import replica_origin

    arrays = {f"shard_{r}": s for r, s in enumerate(inputs.shards)}
    arrays.update({f"dy_{r}": d for r, d in enumerate(inputs.dys or ())})
    arrays.update({k: v for k, v in (("gamma", inputs.gamma), ("beta", inputs.beta)) if v is not None})
    if inputs.running is not None:
        arrays.update(running_mean=inputs.running.mean, running_var=inputs.running.var)
    case = {
        "format": FORMAT, "backend": backend.name, "target": replica_origin(backend), "dtype": dtype,
        "device": device, "split": getattr(split, "value", split), "world_size": inputs.world_size,
        "rows": list(inputs.rows), "axis": int(inputs.axis), "eps": float(inputs.eps),
        "momentum": None if inputs.momentum is None else float(inputs.momentum),
        "running_count": None if inputs.running is None else int(inputs.running.count),
        "dys": inputs.dys is not None, "what": what,
    }
    text = json.dumps(case, indent=1, sort_keys=True)
    digest = hashlib.sha256(text.encode() + b"".join(np.asarray(a).tobytes() for a in arrays.values())).hexdigest()
    folder = Path(root) / "replicas" / f"{_slug(backend.name)}-w{inputs.world_size}-{_slug(case['split'])}-{dtype}-{digest[:10]}"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "inputs.npz", **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
    (folder / "case.json").write_text(text)
    return folder


def replay_line(folder) -> str:
    """The command that reruns the example saved in `folder`."""
    return f"python -m bnconf.conformance.replica_repro {folder}"


def load_case(folder) -> tuple[dict, ShardedInputs]:
    """(case.json's fields, the inputs) of a saved example; ValueError naming what is wrong."""
    folder = Path(folder)
    try:
        case = json.loads((folder / "case.json").read_text())
        arrays = dict(np.load(folder / "inputs.npz"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder}: not a saved replica example ({e})") from None
    if case.get("format") != FORMAT:
        raise ValueError(f"{folder}: case.json is not {FORMAT}")
    w = int(case["world_size"])
    running = None
    if "running_mean" in arrays:
        running = RunningStats(arrays["running_mean"], arrays["running_var"], int(case["running_count"] or 0))
    inputs = ShardedInputs(
        shards=tuple(arrays[f"shard_{r}"] for r in range(w)), axis=int(case["axis"]), eps=float(case["eps"]),
        gamma=arrays.get("gamma"), beta=arrays.get("beta"), running=running, momentum=case["momentum"],
        dys=tuple(arrays[f"dy_{r}"] for r in range(w)) if case.get("dys") else None)
    return case, inputs


def _backend(case: dict, target: str | None):
    from ..adapters.replica_registry import REPLICA_TARGETS, load_replicas

    built_in = {t for t, _ in REPLICA_TARGETS.values()}
    chosen = target or case.get("target")
    if chosen is None:
        raise ValueError(f"the case does not say where backend {case['backend']!r} comes from: give --backend TARGET")
    if target is None and chosen not in built_in:
        raise ValueError(f"the case names target {chosen!r}, not a bnconf built-in; replay imports it only when "
                         f"named: --backend {chosen}")
    backends = load_replicas(chosen)
    for b in backends:
        if b.name == case["backend"]:
            return b
    if target is not None and len(backends) == 1:  # the example rerun on the one backend named (a fixed version)
        return backends[0]
    raise ValueError(f"{chosen} has no replica backend named {case['backend']!r}")


def replay(folder, target: str | None = None, out=print) -> int:
    """Rerun a saved example; 0 when every quantity is accepted, 1 otherwise."""
    from ..adapters.replica_protocol import ReplicaCrash, ReplicaTimeout
    from .replica_battery import ACCEPTED, close_backends, run_example, where
    from .replica_cases import Split

    case, inputs = load_case(folder)
    backend = _backend(case, target)
    out(f"{backend.name}: world size {inputs.world_size}, split {case['split']} {list(inputs.rows)}, {case['dtype']}")
    try:
        ex = run_example(backend, inputs, case["dtype"], case["device"], Split(case["split"]))
    except (ReplicaTimeout, ReplicaCrash) as e:
        out(f"  {'timed out' if isinstance(e, ReplicaTimeout) else 'crashed'}: {' '.join(str(e).split())}")
        return 1
    finally:
        close_backends([backend])
    failing = ex.failing()
    for q, c in ex.declared.items():
        verdict = "known discrepancy" if ex.known(q) else c.verdict.value
        out(f"  {q:13} {verdict:22} error/bound {c.max_ratio:.3g} at {where(q, c.worst_index, inputs.rows) or '-'}"
            + (f"; {c.detail}" if c.detail else ""))
    return 1 if failing or any(c.verdict not in ACCEPTED and not ex.known(q) for q, c in ex.declared.items()) else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnconf.conformance.replica_repro",
                                     description="rerun a saved distributed (replica) example")
    parser.add_argument("folder")
    parser.add_argument("--backend", default=None, metavar="TARGET", help="module:attr holding the replica backend")
    args = parser.parse_args(argv)
    try:
        return replay(args.folder, args.backend)
    except ValueError as e:
        print(f"replica replay: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
