"""Where a run came from: the data fingerprint, the git commit and the package version, logged as tags."""

from __future__ import annotations

import hashlib
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Iterable

from anomaflow.model.data.samples import Sample


def data_fingerprint(samples: Iterable[Sample], root: Path) -> str:
    """sha256 of the sorted relative file list with sizes: changes when the data changes."""
    h = hashlib.sha256()
    for s in sorted(samples, key=lambda s: str(s.path)):
        for p in (s.path, s.mask_path):
            if p is not None and p.exists():
                # fsencode: a file name that is not valid UTF-8 must not crash a finished training run.
                name = os.fsencode(p.relative_to(root) if p.is_relative_to(root) else p)
                h.update(name + f":{p.stat().st_size}\n".encode())
    return h.hexdigest()


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def anomaflow_version() -> str:
    try:
        return metadata.version("anomaflow")
    except metadata.PackageNotFoundError:
        return "unknown"
