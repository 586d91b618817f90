"""Atomic file writes: a file is either its old content or its complete new content, never half-written."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dreamrelation.errors import UserError

__all__ = [
    "RunLock",
    "atomic_directory",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "ensure_output_dir",
    "remove_partial_writes",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it onto ``path`` on success, delete it on failure.

    The temp file keeps ``path``'s suffix (or ``suffix`` if given) so that writers which pick a
    format from the extension (PIL, PyAV) still work. Parent directories are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    sfx = target.suffix if suffix is None else suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{sfx}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_path: nothing was written to the temp file for {target}")
        # mkstemp creates 0600 files; give the result ordinary permissions.
        with contextlib.suppress(OSError):
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def remove_partial_writes(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temp files :func:`atomic_path` leaves in ``folder`` when its process is killed (kill -9,
    power loss) before the rename; returns them. Call it only while no other writer uses the folder."""
    found = [p for p in Path(folder).glob(".*.tmp*") if p.is_file()]
    for p in found:
        with contextlib.suppress(OSError):
            p.unlink()
    return found


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp directory beside ``path``; on success it replaces ``path`` (an old one is moved aside
    first, then removed), on failure it is deleted. Parent directories are created."""
    folder = Path(path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (fsync'd temp file + rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def _json_default(obj: Any) -> Any:
    """Serialise numpy scalars/arrays, paths and sets that ``json`` does not know."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    tolist = getattr(obj, "tolist", None)  # numpy arrays / scalars, torch tensors
    if callable(tolist):
        return tolist()
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _nan_to_none(obj: Any) -> Any:
    """Recursively replace non-finite floats by ``None`` (strict JSON has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, indent: int = 2, nan_to_null: bool = True
) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (numpy values and paths are converted).

    With ``nan_to_null`` (default) NaN/inf become ``null`` so the file is strict JSON.
    """
    if nan_to_null:
        # round-trip through json to convert numpy values first, then drop non-finite floats
        obj = _nan_to_none(json.loads(json.dumps(obj, default=_json_default, allow_nan=True)))
    text = json.dumps(obj, indent=indent, default=_json_default, allow_nan=not nan_to_null)
    return atomic_write_text(path, text + "\n")


def ensure_output_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents) now, before any expensive work, and check that it
    is writable; a :class:`UserError` names the file in the way and ``option``, the fix."""
    folder = Path(path).expanduser()
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(
            f"{folder}: cannot be an output folder, {blocker} is a file; choose another {option}."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{folder}: cannot write there ({reason}); choose another {option}.") from None
    return folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class RunLock:
    """An exclusive lock on a run folder: ``FOLDER/.lock`` holds the owner's host and pid.

    A second run on the same folder gets a :class:`UserError`; a lock left by a killed run on this host
    (its pid no longer exists) is reported as stale with the command that clears it, never taken over
    silently. Use as a context manager; the lock file is removed on exit. Re-entrant within one process (a
    command that locks its run folder may call a library function that locks it again).
    """

    FILE = ".lock"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / self.FILE
        self.owned = False

    def _owner(self) -> str:
        return f"{socket.gethostname()} {os.getpid()}"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if self.path.read_text().strip() == self._owner():
                    return self  # held by this process already
            raise UserError(self._held_message()) from None
        with os.fdopen(fd, "w") as f:
            f.write(self._owner() + "\n")
        self.owned = True
        return self

    def _held_message(self) -> str:
        try:
            host, pid_text = self.path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return f"{self.path}: unreadable run lock; if no run uses {self.path.parent}, delete it (rm {self.path})."
        if host == socket.gethostname() and not _pid_alive(pid):
            return (
                f"{self.path}: stale lock of a run that ended without cleaning up (pid {pid} no longer runs); "
                f"delete it (rm {self.path}) and run again (add --resume to continue that run)."
            )
        return (
            f"{self.path.parent}: in use by another run (pid {pid} on {host}); wait for it, choose another "
            "--out, or delete the lock if that run is gone."
        )

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.owned = False
