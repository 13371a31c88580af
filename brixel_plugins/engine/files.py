"""Files of a run: checkpoints that are never half-written (an atomic mmengine file backend; the
writes themselves are :mod:`brixel_plugins.common.filesystem`'s, shared by every trainer) and one run at a time
in a work dir (:func:`work_dir_lock`, every training tool)."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple, Union

from mmengine.fileio import LocalBackend, register_backend

from ..common.filesystem import acquire_lock_file, release_lock_file, write_bytes_atomic, write_error


class AtomicLocalBackend(LocalBackend):
    """mmengine's local backend, but every file is written to a temporary name, fsynced and renamed:
    a kill mid-write leaves the previous file intact, never a truncated one.
    Configs select it with ``backend_args=dict(backend='atomic_local')``."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        write_bytes_atomic(filepath, obj)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = "utf-8") -> None:
        self.put(obj.encode(encoding), filepath)


register_backend("atomic_local", AtomicLocalBackend, force=True)


# -- one run per work dir --------------------------------------------------------------------------
LOCK_FILE = ".brixel-run.lock"


class WorkDirBusyError(RuntimeError):
    """Another run is writing into the work dir (or may be: see the message)."""


def _holder(record: dict) -> str:
    return (f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, started {record.get('started', '?')}: "
            f"{record.get('command', '?')}")


def _read_record(text: str) -> Optional[dict]:
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _take(work_dir: Path) -> Tuple[int, Path, Optional[str]]:
    """Lock ``work_dir``: the lock's descriptor, its file, and a warning if a run that died left it."""
    lock = work_dir / LOCK_FILE
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        fd = acquire_lock_file(lock, blocking=False)
    except BlockingIOError:
        try:
            record = _read_record(lock.read_text())
        except OSError:
            record = None
        holder = _holder(record) if record else "a run that has not recorded itself yet"
        raise WorkDirBusyError(f"work dir {work_dir} is in use by another run ({holder}; lock file {lock}): "
                               f"two runs in one work dir mix their checkpoints and results; wait for it to end "
                               f"or give another work dir") from None
    except OSError as e:  # an unwritable work dir: say which
        raise (write_error(e, lock) or e) from None
    try:
        previous = _read_record(os.read(fd, 1 << 16).decode("utf-8", "replace"))
        here = socket.gethostname()
        warning = None
        if previous:
            if previous.get("host") != here:
                # flock may not reach across machines on every shared file system: do not guess
                raise WorkDirBusyError(
                    f"work dir {work_dir} was locked by a run on another machine ({_holder(previous)}); this "
                    f"machine cannot check whether it still runs. If it has ended, delete {lock} and start again")
            state = "still exists but" if _pid_alive(int(previous.get("pid", -1))) else "has ended and"
            warning = (f"work dir {work_dir}: taking over the lock of an earlier run that {state} no longer holds it "
                       f"({_holder(previous)}), e.g. a killed run")
        record = dict(pid=os.getpid(), host=here, started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                      command=" ".join([os.path.basename(sys.executable), *sys.argv]))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
    except BaseException:
        os.close(fd)  # keep the file (and a record it holds) for the message of the next try
        raise
    return fd, lock, warning


@contextmanager
def work_dir_lock(work_dir: Union[str, Path]) -> Iterator[None]:
    """One run at a time in ``work_dir``: a second run is refused at once with a
    :class:`WorkDirBusyError` naming the first (pid, host, start, command) and the lock file.

    ``flock`` on ``work_dir/.brixel-run.lock``, which holds the holder's pid and host for the
    message; released when the block ends (exception or not) and by the OS when the process dies,
    so a killed run leaves a lock the next run takes over with a warning (``--resume`` works).
    In a process group (torchrun, detectron2's launch) only rank 0 locks, and every rank learns
    its outcome before the block, i.e. before any of them writes; call it on every rank, after the
    process group is started.
    """
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    fd = lock = warning = error = None
    if rank == 0:
        try:
            fd, lock, warning = _take(Path(work_dir))
        except Exception as e:  # noqa: BLE001  every rank stops with it
            error = e
    if distributed:
        outcome = [None if error is None else str(error)]
        dist.broadcast_object_list(outcome, src=0)
        if rank != 0 and outcome[0] is not None:
            raise WorkDirBusyError(outcome[0])
    if error is not None:
        raise error
    if warning:
        warnings.warn(warning, UserWarning, stacklevel=3)
    try:
        yield
    finally:
        if fd is not None:
            release_lock_file(lock, fd)
