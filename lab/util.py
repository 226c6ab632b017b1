"""Small helpers shared by the lab modules: bounded command runs, bounded waits,
process identity (pid + start time) and name shortening.

Plain stdlib; nothing here touches the network.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from typing import Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")

IFNAMSIZ = 15  # longest Linux interface name (IFNAMSIZ - 1)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class LabError(RuntimeError):
    """A lab operation failed; the message says what ran and what it printed."""


def run(argv: Sequence[str], *, timeout: float = 30.0, check: bool = True,
        input: str | None = None, env: Mapping[str, str] | None = None,
        ) -> subprocess.CompletedProcess:
    """Run argv (no shell), capture text output, bounded by `timeout` seconds.

    Raises LabError with the command, rc, stdout and stderr when check is true and rc != 0.
    """
    try:
        cp = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                            timeout=timeout, env=dict(env) if env is not None else None)
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from e
    except FileNotFoundError as e:
        raise LabError(f"command not found: {argv[0]} (install it, see lab.packages)") from e
    if check and cp.returncode != 0:
        raise LabError(f"rc={cp.returncode}: {' '.join(argv)}\n"
                       f"stdout: {cp.stdout.strip()}\nstderr: {cp.stderr.strip()}")
    return cp


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.1,
             what: str = "condition") -> T:
    """Call predicate until it returns a truthy value; return that value.

    Bounded both in time (`timeout` seconds) and in count (timeout/interval + 2 calls).
    Raises TimeoutError naming `what` if it never becomes true.
    """
    interval = max(interval, 0.001)
    max_calls = int(timeout / interval) + 2
    deadline = time.monotonic() + timeout
    for _ in range(max_calls):
        value = predicate()
        if value:
            return value
        now = time.monotonic()
        if now >= deadline:
            break
        time.sleep(min(interval, deadline - now))
    raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")


def short_name(name: str, maxlen: int = IFNAMSIZ) -> str:
    """Return name unchanged if it fits in maxlen, else a truncated form plus a
    4-hex-digit hash so distinct long names stay distinct and deterministic."""
    if len(name) <= maxlen:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:4]
    return name[: maxlen - 5].rstrip("-") + "-" + digest


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces/parens: fields after the last ')' are positional
    return data[data.rfind(")") + 2:].split()


def proc_starttime(pid: int) -> int | None:
    """Start time of pid in clock ticks since boot (field 22 of /proc/PID/stat), None if gone."""
    rest = _stat_fields(pid)
    try:
        return int(rest[19]) if rest else None
    except (IndexError, ValueError):
        return None


def proc_state(pid: int) -> str | None:
    """Single-letter process state (R, S, Z, ...), None if the pid does not exist."""
    rest = _stat_fields(pid)
    return rest[0] if rest else None


def pid_matches(pid: int, starttime: int | None) -> bool:
    """True if pid exists, is not a zombie, and (if given) started at `starttime`
    (guards against pid reuse after a crash)."""
    st = proc_state(pid)
    if st is None or st in ("Z", "X"):
        return False
    if starttime is None:
        return True
    return proc_starttime(pid) == starttime


def reap(pid: int) -> None:
    """Reap pid if it is our exited child (avoids zombies); harmless otherwise."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError:
        pass


def group_alive(pgid: int) -> bool:
    """True if any non-zombie process is in process group pgid."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(…, 0) also succeeds for zombies: check members via /proc
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read().decode(errors="replace")
        except OSError:
            continue
        rest = data[data.rfind(")") + 2:].split()
        if len(rest) > 2 and rest[2] == str(pgid) and rest[0] not in ("Z", "X"):
            return True
    return False


def stop_process(pid: int, starttime: int | None, *, pgid: int | None = None,
                 timeout: float = 10.0, sig: int = signal.SIGTERM) -> str:
    """Stop a process, and its process group if pgid is given: send `sig`, wait up to
    `timeout` s, then SIGKILL and wait up to 5 s more. Returns 'gone', 'stopped' or
    'killed'.

    The pid is only signalled if its start time matches (no pid reuse accidents). The
    group is only signalled if its leader was verified that way at the start of the call
    (the kernel does not reuse a number while a process group of that id exists, so the
    group stays ours while we wait). Orphaned group members whose leader is already gone
    are left to the namespace sweep of teardown()."""
    reap(pid)
    if not pid_matches(pid, starttime):
        return "gone"
    use_group = bool(pgid) and pgid == pid

    def send(s: int) -> None:
        try:
            if use_group:
                os.killpg(pgid, s)  # type: ignore[arg-type]
            elif pid_matches(pid, starttime):
                os.kill(pid, s)
        except ProcessLookupError:
            pass

    def dead() -> bool:
        reap(pid)
        if pid_matches(pid, starttime):
            return False
        return not (use_group and group_alive(pgid))  # type: ignore[arg-type]

    if sig != signal.SIGKILL:
        send(sig)
        try:
            wait_for(dead, timeout=timeout, interval=0.05, what=f"pid {pid} to exit")
            return "stopped"
        except TimeoutError:
            pass
    send(signal.SIGKILL)
    try:
        wait_for(dead, timeout=5.0, interval=0.05, what=f"pid {pid} to die after SIGKILL")
    except TimeoutError as e:
        raise LabError(str(e)) from e
    return "killed"


def spawn_detached(argv: Sequence[str], *, log_path: str, env: Mapping[str, str] | None = None,
                   cwd: str | None = None) -> subprocess.Popen:
    """Start argv in a new session (setsid: own process group, no controlling tty),
    stdin from /dev/null, stdout+stderr appended to log_path."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab", buffering=0) as log:
        return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(env) if env is not None else None, cwd=cwd,
                                close_fds=True)


def tail(path: str, n: int = 3000) -> str:
    """Last n bytes of a (log) file, '' if missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""
