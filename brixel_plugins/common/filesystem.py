"""Small shared helpers."""
from __future__ import annotations

import errno
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Union

# atomic_path writes ``.<name>.<8 random characters>.tmp`` beside ``<name>``
TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def current_umask() -> int:
    """The process's umask (read from /proc on Linux; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_error(e: BaseException, path: Path) -> Optional[OSError]:
    """An OSError naming ``path`` for a failed write into it (unwritable folder, disk full), or None
    when ``e`` is about another file (something the block read) or not about writing at all."""
    if isinstance(e, OSError) and e.errno is not None:
        where = Path(e.filename) if isinstance(e.filename, (str, Path)) else None
        ours = where is None or where in (path, path.parent) or where in path.parents or (
            where.parent == path.parent and where.name.startswith(f".{path.name}."))  # the temporary file
        if not ours:
            return None  # about a file the block read
        if e.errno in (errno.ENOTDIR, errno.EEXIST):
            blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
            if blocker is not None:
                return OSError(e.errno, f"cannot write {path}: {blocker} is a file, not a folder")
        return OSError(e.errno, f"cannot write {path}: {e.strerror or e}")
    try:  # writers that do not say why (torch's zip writer, safetensors): a full disk?
        fs = os.statvfs(path.parent)
        full = (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) == 0  # root may use the reserved blocks
    except OSError:
        return None
    if full:
        return OSError(errno.ENOSPC, f"cannot write {path}: no space left on device "
                                     f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})")
    return None


@contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    A crash mid-write leaves the previous file intact, never a truncated one. Every atomic write
    of the project (checkpoints of all trainers, pointers, exports, summaries) goes through here.
    The file gets the permissions a plain ``open(path, 'w')`` would give (``0o666`` less the
    umask), not ``mkstemp``'s private 0600, so others on shared storage can read it. A write that
    fails for want of a folder, a permission or disk space raises an OSError naming ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except Exception as e:
        error = write_error(e, path)
        if error is None:
            raise
        raise error from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: Union[str, Path], data: bytes) -> None:
    """Replace the file at ``path`` by ``data`` in one step (a reader sees the old or the new)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Union[str, Path], text: str) -> None:
    """Replace the file at ``path`` by ``text`` in one step (a reader sees the old or the new)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def acquire_lock_file(path: Union[str, Path], blocking: bool = True) -> int:
    """An exclusive ``flock`` on the file ``path`` (created if missing): its open descriptor.

    ``blocking=False`` raises ``BlockingIOError`` at once when another process holds it. The OS
    releases the lock when its holder dies, however it dies. Pair with :func:`release_lock_file`,
    which deletes the file while still holding it; a waiter that then wins the lock on the deleted
    file notices (another inode is, or nothing is, at ``path``) and tries again.
    """
    import fcntl

    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def release_lock_file(path: Union[str, Path], fd: int) -> None:
    """Delete the lock file ``path`` and release the lock ``fd`` of :func:`acquire_lock_file`."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Union[str, Path]) -> Iterator[int]:
    """Hold an exclusive lock on ``path`` while the block runs (waiting for its holder first): what
    several processes do once (write a shared dataset or cache) is done by one while the others wait."""
    fd = acquire_lock_file(path)
    try:
        yield fd
    finally:
        release_lock_file(path, fd)


def remove_stale_temp_files(folder: Union[str, Path]) -> List[Path]:
    """Delete the temporary files of interrupted atomic writes in ``folder`` (not recursive).

    Call it only when nothing is writing there (at the start of a run). Returns what it removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if TEMP_NAME.match(path.name) and path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def update_json(path: Union[str, Path], key: str, value) -> dict:
    """Set ``key`` in the JSON object stored at ``path`` (created if missing), written atomically.

    Several demos add their own section to one summary file; each rewrites only its key.
    """
    import json

    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=str))
    return data
