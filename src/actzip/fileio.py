"""Atomic file writes: a reader sees the old file or the whole new one, never half of it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import ActzipError


def _new_file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the umask (which can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, data: bytes | str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _new_file_mode())  # mkstemp makes it 0o600: the result should read like any file
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and prove it can be written, before any long work starts."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ActzipError(f"cannot write to {str(path)!r}: {e.strerror or e}") from None
    return path


@contextlib.contextmanager
def output_dir(path: str | Path):
    """`writable_dir(path)` for the length of a command: if the command fails, a folder it created
    is removed again where it is still empty, so a failed run leaves nothing behind."""
    path = Path(path)
    created = not path.exists()
    writable_dir(path)
    try:
        yield path
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only if empty: never lose what the command did write
        raise
