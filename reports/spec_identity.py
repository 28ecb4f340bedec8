"""Which rules judged a run: the bnconf version and a digest of the spec's sources, written into every report.

    spec_identity() -> {"bnconf": "0.1.0", "digest": "3f2a..."}

The digest is a SHA-256 over the spec package's Python files and SPEC.md (the oracle, conventions, error model,
translation, verdicts), so that two reports judged by different rules are never merged as if by the
same (`bnconf merge`): any change to the spec, even a comment, gives another digest.
"""

import functools
import hashlib
from importlib import metadata
from pathlib import Path


@functools.cache
def spec_identity() -> dict:
    from .. import spec

    root = Path(spec.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted([*root.rglob("*.py"), root / "SPEC.md"]):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        version = metadata.version("bnconf")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"bnconf": version, "digest": h.hexdigest()[:16]}
