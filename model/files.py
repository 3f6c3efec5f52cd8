"""Files written whole or not at all, and content hashes: the one helper per concern that every
module uses (standard library only, so the torch-free runtime uses it too)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _create_sibling(path: Path) -> tuple[Path, int]:
    """A new hidden file beside `path` (never an existing name or a link: O_EXCL), mode 0666
    minus the umask like any other file the process writes."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, 0o666)
        except FileExistsError:
            continue


@contextmanager
def atomic_write(path: str | Path, fsync: bool = False) -> Iterator[IO[bytes]]:
    """A binary file whose content replaces `path` only when the block ends without error: written
    to a temporary sibling, then renamed, so a reader sees the old file or the new one, never half
    of one. On any error the temporary file is removed and `path` is as it was. fsync: flush to
    disk before the rename (for files whose loss after a power cut would lose data)."""
    path = Path(path)
    tmp, fd = _create_sibling(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(data: bytes, path: str | Path, fsync: bool = False) -> Path:
    with atomic_write(path, fsync) as fh:
        fh.write(data)
    return Path(path)


def write_json_atomic(obj: Any, path: str | Path, **dump_options: Any) -> Path:
    """JSON (indent 2, plus any json.dumps option) written whole."""
    return write_bytes_atomic(json.dumps(obj, indent=2, **dump_options).encode(), path)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weights files are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
