"""Process trees: start one in its own session, watch it, and make sure all of it dies.

Guarantees:
- The command runs in a new session (its own process group), stdin from /dev/null,
  stdout and stderr appended to a log *file* — never a pipe, so a grandchild that keeps
  the output open cannot hang the harness.
- Every process carries `AUTORESEARCH_MARKER=<marker>` in its environment. Killing a
  tree means: SIGTERM to the group, a grace period, SIGKILL to the group, then SIGKILL
  to any process still carrying the marker (one that escaped with setsid). When the
  main process exits by itself, whatever it left behind is killed the same way.
- `kill_marked(marker)` finds and kills leftovers of a harness that died (SIGKILL):
  that is how a restart leaves no orphan.
- Peak RSS is the maximum, over samples, of the summed RSS of the group's processes.
- The log is capped at `log_max_bytes` (default LOG_MAX_BYTES): its first and last halves
  are kept and the middle is dropped, with a line saying how much. While the tree runs the
  middle is freed as it grows (a hole punched in the file: the child's appends are never
  raced, and the disk never holds much more than the cap); once the tree is dead the file is
  rewritten as head + note + tail. `ProcResult.log_bytes` is what the tree wrote in all. The
  end of the output, where metrics are printed, always survives.
- The machine's load around the run: the 1-minute load average before and after, and the
  CPU time (user + system) the kernel accounts to the tree, read from wait4's rusage of
  the main process (it includes every descendant that was waited for, as a shell waits
  for its command). CPU time well below the wall time of a single-threaded run means it
  waited for a CPU: the machine was busy (see pairing.py, which reports it).

Not covered: processes that scrub their own environment *and* leave the process group;
memory on the GPU (the experiment reports its own, e.g. peak_vram_mb); a process that
escaped the kill and keeps writing to the log's old (replaced) file; a filesystem without
hole punching, where the middle is cut by truncation (output written during the cut is lost).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

MARKER_VAR = "AUTORESEARCH_MARKER"
LOG_MAX_BYTES = 32 << 20  # experiment.log_max_mb's default: 16 MiB of head, 16 MiB of tail
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class ProcResult:
    exit_code: Optional[int]
    wall_s: float
    timed_out: bool
    interrupted: bool
    peak_rss_mb: float
    pid: int
    log_bytes: int = 0  # everything the tree wrote to its log, the dropped middle included
    cpu_s: Optional[float] = None  # user + system CPU time of the tree (waited-for descendants), None if unknown
    loadavg: tuple[float, float] = (0.0, 0.0)  # the 1-minute load average before and after the run

    def load(self) -> dict[str, Any]:
        """The machine's load around the run, as stored with its measurement (ledger `load`)."""
        out: dict[str, Any] = {"loadavg_before": round(self.loadavg[0], 2), "loadavg_after": round(self.loadavg[1], 2),
                               "cpus": os.cpu_count() or 1, "wall_s": round(self.wall_s, 4)}
        if self.cpu_s is not None:
            out["cpu_s"] = round(self.cpu_s, 4)
            out["cpu_per_wall"] = round(self.cpu_s / self.wall_s, 3) if self.wall_s > 0 else None
        return out


def run_tree(
    cmd: str,
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    timeout_s: float,
    grace_s: float,
    marker: str,
    should_stop: Callable[[], bool] = lambda: False,
    on_start: Callable[[int], None] = lambda pid: None,
    on_tick: Callable[[float], None] = lambda elapsed: None,
    wrap: Optional[list[str]] = None,
    log_max_bytes: int = LOG_MAX_BYTES,
) -> ProcResult:
    """Run `cmd` through the shell as its own process tree; see the module docstring."""
    env = dict(env)
    env[MARKER_VAR] = marker
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = (wrap or []) + ["/bin/sh", "-c", cmd]
    load_before = _loadavg()
    start = time.monotonic()
    with open(log_path, "ab", buffering=0) as log:
        cap = LogCap(log_path, log.tell(), log_max_bytes)
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent, close_fds=True,
        )
    on_start(proc.pid)
    pgid = proc.pid
    peak = 0.0
    timed_out = interrupted = False
    usage = None
    tick = 0.02  # short first waits so fast commands cost little; then back off
    try:
        while True:
            usage = _wait_usage(proc, tick)
            if proc.returncode is not None:
                break
            tick = 0.02 if cap.check() else min(tick * 2, 0.25)  # a flood is checked often: the disk is finite
            elapsed = time.monotonic() - start
            peak = max(peak, group_rss_mb(pgid))
            on_tick(elapsed)
            if elapsed >= timeout_s:
                timed_out = True
                break
            if should_stop():
                interrupted = True
                break
    finally:
        # Whatever happened (normal exit, timeout, stop, or an exception in the harness),
        # nothing of this tree survives this function.
        kill_tree(pgid, marker, grace_s if (timed_out or interrupted) else 0.0, proc)
        written = cap.finish()  # the tree is dead: nobody appends while the file is rewritten
    wall = time.monotonic() - start
    code = proc.returncode
    # A wrapped tree (bubblewrap) is not waited for by its launcher's parent in a way that hands its CPU time
    # up (the rusage reads ~0): no figure rather than a false one.
    cpu = usage.ru_utime + usage.ru_stime if usage is not None and not (timed_out or interrupted or wrap) else None
    return ProcResult(exit_code=code, wall_s=wall, timed_out=timed_out, interrupted=interrupted,
                      peak_rss_mb=peak, pid=proc.pid, log_bytes=written, cpu_s=cpu,
                      loadavg=(load_before, _loadavg()))


class LogCap:
    """Keeps a log written by a child (O_APPEND, never a pipe) to its first and last `limit / 2` bytes."""

    SLACK = 1 << 20  # free the middle in steps of at least this much, not on every tick

    def __init__(self, path: Path, start: int, limit: int):
        self.path, self.start = path, start  # bytes before `start` were there already (an appended log)
        self.head = max(limit, 2) // 2
        self.tail = max(limit, 2) - self.head
        self.freed_to = start + self.head  # [start + head, freed_to) is punched out or cut
        self.cut = 0  # bytes removed by truncation (no hole punching here)
        self.seen = start

    def check(self) -> bool:
        """Free the middle if the log outgrew the cap; True if it grew fast since the last check."""
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return False
        fast, self.seen = size - self.seen >= self.SLACK, size
        end = size - self.tail
        if end - self.freed_to < self.SLACK:
            return fast
        with open(self.path, "r+b", buffering=0) as f:
            if _punch_hole(f.fileno(), self.freed_to, end - self.freed_to):
                self.freed_to = end
            else:
                f.seek(end)
                tail = f.read(self.tail)
                cut_at = self.start + self.head
                self.cut += os.fstat(f.fileno()).st_size - cut_at - len(tail)
                f.truncate(cut_at)  # the child appends (O_APPEND) after what stays
                f.seek(cut_at)
                f.write(tail)
                self.freed_to = cut_at
                self.seen = cut_at + len(tail)
        return True

    def finish(self) -> int:
        """Rewrite the log as head + a note + tail; return the bytes written to it in all."""
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return self.cut
        written = size - self.start + self.cut
        if size - self.start <= self.head + self.tail and not self.cut:
            return written
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.cap")
        with open(self.path, "rb") as src, open(tmp, "wb") as out:
            _copy(src, out, self.start + self.head)
            dropped = written - self.head - min(self.tail, size - self.start - self.head)
            out.write(f"\n[autoresearch: {dropped} bytes of output dropped here; the log keeps its first and "
                      f"last {self.head >> 20} MiB (experiment.log_max_mb)]\n".encode())
            src.seek(max(self.start + self.head, size - self.tail))
            _copy(src, out, self.tail)
        os.replace(tmp, self.path)
        return written


def _copy(src, out, n: int) -> None:
    while n > 0:
        chunk = src.read(min(n, 1 << 20))
        if not chunk:
            return
        out.write(chunk)
        n -= len(chunk)


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Free [offset, offset + length) of a file without changing its size (reads as zeros); False if unsupported."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        return libc.fallocate(fd, 0x01 | 0x02, offset, length) == 0  # FALLOC_FL_KEEP_SIZE | PUNCH_HOLE
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False




def _wait_usage(proc: subprocess.Popen, timeout: float):
    """Wait up to `timeout` for `proc` to exit, reaping it with wait4 to keep its rusage.

    Returns the rusage once it exited (proc.returncode set), else None. Polls with short
    sleeps, as Popen.wait(timeout) does, so a fast command costs little.
    """
    deadline, nap = time.monotonic() + timeout, 0.0005
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere: the exit code is known, the usage is not
            proc.wait()
            return None
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(nap, left))
        nap = min(nap * 2, 0.05)


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - no /proc/loadavg
        return 0.0


def kill_tree(pgid: int, marker: str, grace_s: float, proc: Optional[subprocess.Popen] = None) -> None:
    """SIGTERM the group, wait up to `grace_s`, SIGKILL the group and every marked process."""
    group_was_alive = _group_alive(pgid, proc)
    if group_was_alive:
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _group_alive(pgid, proc):
            time.sleep(0.02)
    _signal_group(pgid, signal.SIGKILL)
    killed = _kill_pids(_marked(marker, exact=True))
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - uninterruptible sleep in the kernel
            pass
    # SIGKILL is asynchronous: wait until the processes are really gone, so the next
    # experiment never starts while this one still holds memory (or a GPU).
    _wait_gone(killed, lambda: group_was_alive and _group_alive(pgid, None))


def kill_marked(marker: str) -> int:
    """SIGKILL every process whose environment holds exactly our marker; returns how many."""
    killed = _kill_pids(_marked(marker, exact=True))
    _wait_gone(killed)
    return len(killed)


def marked_pids(marker_prefix: str) -> list[int]:
    """Live (non-zombie) processes whose marker starts with `marker_prefix`."""
    return _marked(marker_prefix, exact=False)


def kill_marked_prefix(marker_prefix: str) -> int:
    """SIGKILL every live process whose marker starts with `marker_prefix`, and wait until they are gone."""
    killed = _kill_pids(marked_pids(marker_prefix))
    _wait_gone(killed)
    return len(killed)


def _marked(marker: str, exact: bool) -> list[int]:
    # Entries of /proc/PID/environ are NUL-separated; anchor the match at an entry's start.
    needle = b"\0" + f"{MARKER_VAR}={marker}".encode() + (b"\0" if exact else b"")
    me = os.getpid()
    out = []
    for pid in _pids():
        if pid == me:
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in b"\0" + environ + b"\0" and _state(pid) not in ("Z", "X"):
            out.append(pid)
    return out


def _kill_pids(pids: list[int]) -> list[int]:
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def _wait_gone(pids: list[int], also: Callable[[], bool] = lambda: False, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (any(pid_alive(p) for p in pids) or also()):
        time.sleep(0.005)


def group_rss_mb(pgid: int) -> float:
    total = 0
    for pid in _pids():
        stat = _stat(pid)
        if stat and stat[2] == pgid:
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
            except (OSError, IndexError, ValueError):
                pass
    return total / 2**20


def _group_alive(pgid: int, proc: Optional[subprocess.Popen]) -> bool:
    if proc is not None and proc.poll() is None:
        return True
    for pid in _pids():
        stat = _stat(pid)
        if stat and stat[2] == pgid and stat[0] != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pids() -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def _stat(pid: int) -> Optional[tuple[str, int, int]]:
    """(state, ppid, pgid) from /proc/PID/stat, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[2])


def _state(pid: int) -> str:
    s = _stat(pid)
    return s[0] if s else "X"


def pid_alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    return _state(pid) not in ("X", "Z")


def _die_with_parent() -> None:
    # Linux: the direct child gets SIGKILL if the harness dies; grandchildren are found
    # by their marker on the next start (kill_marked_prefix).
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - not glibc
        pass
