"""One run per run directory, and no rank outliving its launcher.

`RunDirectoryLock`: a training run holds an exclusive `fcntl.flock` on RUN_DIR/.lock for as long as
its rank 0 lives. The file names the holder (host, pid, start time) so a second run started on the
same directory fails at once saying who holds it. The kernel drops a flock when its process dies, so
a lock left behind by a killed run is never in the way: the next run takes it and says whose it was.
(flock on NFS is emulated with POSIX locks on Linux >= 2.6.12; on shared storage the holder's host
in the message tells where to look.)

Where `flock` is not supported (it raises ENOSYS on Lustre mounted without `flock`), the lock is the
exclusive creation of RUN_DIR/.lock.held (O_CREAT | O_EXCL, atomic on every POSIX filesystem), holding
the same record and removed on release. Nothing releases it when the holder dies, so it is stale when
its holder is a dead process on this host, or when its heartbeat (the holder touches the file every
HEARTBEAT_S) is older than STALE_AFTER_S, for a holder on another host.

`exit_with_launcher`: torchrun starts each worker in its own session, so a SIGKILLed torchrun (an
OOM kill, `kill -9`, a node agent) leaves its workers running, training on and writing checkpoints
nobody will read. Each worker watches its parent and exits within seconds once it is gone.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from ..errors import UserError
from .failures import agree_on_user_error

LOCK_FILENAME = ".lock"
FALLBACK_LOCK_FILENAME = ".lock.held"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
# What flock raises where the filesystem does not support it (Lustre without `flock`: ENOSYS).
_FLOCK_UNSUPPORTED = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)
PARENT_POLL_S = 0.5
LAUNCHER_DIED_EXIT_CODE = 1


class RunDirectoryInUseError(UserError):
    """Another live run holds the run directory."""


def _holder_text(record: dict) -> str:
    if not record:
        return "an unknown process"
    return f"pid {record.get('pid')} on host {record.get('host')} (started {record.get('started', '?')})"


class RunDirectoryLock:
    """An exclusive lock on a run directory, held until `release()` or the process's death.

    Attributes:
        previous_holder: what the lock file said before this process took it ({} if it was new), e.g.
            a run killed without releasing; the kernel released its flock when it died.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILENAME
        self.previous_holder: dict = {}
        self.fallback_path: Path | None = None  # the exclusive-create lock file, where flock is unsupported
        self._fd: int | None = None
        self._heartbeat_stop: threading.Event | None = None

    def _in_use(self, holder: dict, path: Path) -> RunDirectoryInUseError:
        return RunDirectoryInUseError(
            f"run directory {self.path.parent} is in use by another run: {_holder_text(holder)} holds "
            f"{path}; wait for it to end, stop it, or choose another run_dir"
        )

    def acquire(self) -> "RunDirectoryLock":
        """Creates the run directory if needed and takes the lock; RunDirectoryInUseError if a live run has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd)
            os.close(fd)
            raise self._in_use(holder, self.path) from None
        except OSError as error:
            os.close(fd)
            if error.errno not in _FLOCK_UNSUPPORTED:
                raise
            return self._acquire_by_exclusive_create()
        self.previous_holder = _read_record(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _own_record(), 0)
        self._fd = fd
        return self

    def _acquire_by_exclusive_create(self) -> RunDirectoryLock:
        path = self.path.with_name(FALLBACK_LOCK_FILENAME)
        # Two rounds: a stale file is moved aside once, then the creation is tried again.
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_file_record(path)
                if not _is_stale(path, holder):
                    raise self._in_use(holder, path) from None
                self.previous_holder = holder
                # A rename, not an unlink: of two runs taking over at once, only one moves the file
                # (the other gets FileNotFoundError), and both then race on O_EXCL, which one wins.
                try:
                    os.replace(path, path.with_name(f"{path.name}.stale-{os.getpid()}"))
                    os.unlink(path.with_name(f"{path.name}.stale-{os.getpid()}"))
                except FileNotFoundError:
                    pass
                continue
            try:
                os.write(fd, _own_record())
                os.fsync(fd)
            finally:
                os.close(fd)
            self.fallback_path = path
            self._heartbeat_stop = _start_heartbeat(path)
            return self
        raise self._in_use(_read_file_record(path), path)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self.fallback_path is not None:
            self._heartbeat_stop.set()
            # Only our own file: after a takeover (we were judged stale) it belongs to another run.
            if _read_file_record(self.fallback_path).get("pid") == os.getpid():
                self.fallback_path.unlink(missing_ok=True)
            self.fallback_path = None

    def __del__(self) -> None:
        # A trainer that failed after taking the lock must not keep it for the rest of the process
        # (flock locks belong to the open file, so even this process could not take it again).
        self.release()

    @property
    def stale_note(self) -> str | None:
        """A line about a previous holder that died holding the lock, or None."""
        if not self.previous_holder or self.previous_holder.get("pid") == os.getpid():
            return None
        return f"took over {self.path} from {_holder_text(self.previous_holder)}, which ended without releasing it"


def _own_record() -> bytes:
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return (json.dumps(record) + "\n").encode()


def _read_file_record(path: Path) -> dict:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return {}
    try:
        return _read_record(fd)
    finally:
        os.close(fd)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _is_stale(path: Path, holder: dict) -> bool:
    """A fallback lock file whose holder is gone: a dead pid on this host, else a heartbeat too old."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _process_alive(holder["pid"])
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    return age > STALE_AFTER_S


def _start_heartbeat(path: Path) -> threading.Event:
    """Touches `path` every HEARTBEAT_S until the returned event is set: a holder on another host
    checks the file's age to tell a live holder from a dead one."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                os.utime(path)
            except FileNotFoundError:
                return

    threading.Thread(target=beat, name="seq2vae-run-lock-heartbeat", daemon=True).start()
    return stop


def _read_record(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        record = json.loads(text) if text else {}
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def exit_with_launcher(poll_s: float = PARENT_POLL_S) -> threading.Thread | None:
    """Under torchrun: exits this process within `poll_s` seconds of its launcher's death.

    A daemon thread polls `os.getppid()`; a reparented worker (its parent pid changed: to 1 or to a
    subreaper) prints one line and leaves with `os._exit`, which needs no cooperation from the main
    thread (it may be blocked in a collective that would only time out after minutes). Outside
    torchrun (no TORCHELASTIC_RUN_ID) the parent is a shell or a test, and nothing is watched.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    launcher = os.getppid()

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(poll_s):
            if os.getppid() != launcher:
                print(
                    f"seq2vae train: rank {os.environ.get('RANK', '?')}: the launcher (pid {launcher}) is gone; exiting",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(LAUNCHER_DIED_EXIT_CODE)

    thread = threading.Thread(target=watch, name="seq2vae-launcher-watch", daemon=True)
    thread.start()
    return thread


def hold_run_directory(run_dir: Path, world) -> RunDirectoryLock | None:
    """Rank 0 takes the run directory's lock; every rank raises if it could not (a collective).

    Returns the lock on rank 0 (release it when the run ends), None on other ranks.
    """
    lock, error = None, None
    if world.is_main:
        try:
            lock = RunDirectoryLock(run_dir).acquire()
        except RunDirectoryInUseError as refused:
            error = refused
    agree_on_user_error(error, world.device)
    if lock is not None and lock.stale_note:
        print(f"seq2vae train: {lock.stale_note}", flush=True)
    return lock
