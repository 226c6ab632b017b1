"""The lab's JSON state file and teardown.

Everything the lab creates is written to `<labdir>/state.json` *before or right after*
it is created (namespaces before `ip netns add`, processes right after spawn), so
`teardown()` can remove it even after the creating process crashed. Teardown also
sweeps by name prefix (namespaces, root-namespace interfaces, /run/netns mounts), so a
crash between "create" and "record" is still cleaned up.

State file layout (version 1)::

    {"version": 1, "prefix": "ksl-", "labdir": "...", "created": 1700000000.0,
     "owner_pid": 1234,
     "namespaces": {"ksl-wan": {"role": "wan"}, "ksl-a1": {"role": "host", "host": "a1", ...}},
     "interfaces": {"ksl-br0": {"netns": "ksl-wan", "kind": "bridge"}, ...},
     "hosts": {"a1": {"region": "a", "address": "10.0.1.10/24", "netns": "ksl-a1", ...}},
     "processes": {"a1/sleeper": {"pid": 1, "starttime": 2, "pgid": 1, "netns": "ksl-a1", ...}},
     "binds": {"a1": {"/etc/mysql": "/var/tmp/ksl/hosts/a1/root/etc/mysql"}},
     "mounts": [{"host": "a1", "process": "a1/sleeper", "target": "/etc/mysql", "source": "...",
                 "scope": "private mount namespace of the process"}],
     "created_paths": ["/etc/mysql"],
     "rules": {"a1": {"partition": [...], "latency": {...}}}, "sysctls": {...}, "probes": {...}}
"""
from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import threading
import time
from typing import Any, Iterator

from .util import LabError, pid_matches, reap, run, stop_process

DEFAULT_PREFIX = "ksl-"
DEFAULT_LAB_DIR = os.environ.get("KSL_LAB_DIR", "/var/tmp/ksl")
STATE_NAME = "state.json"
_LIST_KEYS = ("mounts", "created_paths")
_DICT_KEYS = ("namespaces", "interfaces", "hosts", "processes", "binds", "rules",
              "sysctls", "probes")


def _empty(prefix: str, labdir: str) -> dict[str, Any]:
    data: dict[str, Any] = {"version": 1, "prefix": prefix, "labdir": labdir,
                            "created": time.time(), "owner_pid": os.getpid()}
    for k in _DICT_KEYS:
        data[k] = {}
    for k in _LIST_KEYS:
        data[k] = []
    return data


class LabState:
    """Read/modify/write access to `<labdir>/state.json`, serialised with flock and
    written atomically (temp file + rename), so a crash never leaves half a file."""

    def __init__(self, labdir: str = DEFAULT_LAB_DIR, prefix: str = DEFAULT_PREFIX):
        if not prefix or len(prefix) > 8 or not prefix.endswith("-"):
            raise ValueError("prefix must be 1-8 characters ending in '-', e.g. 'ksl-'")
        self.labdir = os.path.abspath(labdir)
        self.prefix = prefix
        self.path = os.path.join(self.labdir, STATE_NAME)
        self._lock_path = os.path.join(self.labdir, ".state.lock")
        self._tlock = threading.RLock()
        os.makedirs(self.labdir, exist_ok=True)
        with self.update() as data:
            if data.get("prefix") != prefix:
                if any(data.get(k) for k in ("namespaces", "processes")):
                    raise LabError(f"{self.path} belongs to a lab with prefix "
                                   f"{data.get('prefix')!r}, not {prefix!r}: tear it down first")
                data["prefix"] = prefix

    # -- raw access -------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        """Return a copy of the current state (an empty state if there is no file)."""
        try:
            with open(self.path) as f:
                data = json.load(f)
        except FileNotFoundError:
            data = _empty(getattr(self, "prefix", DEFAULT_PREFIX), self.labdir)
        except json.JSONDecodeError as e:
            raise LabError(f"corrupt state file {self.path}: {e}") from e
        for k in _DICT_KEYS:
            data.setdefault(k, {})
        for k in _LIST_KEYS:
            data.setdefault(k, [])
        return data

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, Any]]:
        """`with state.update() as data:` mutate data; it is saved atomically on exit."""
        with self._tlock:
            os.makedirs(self.labdir, exist_ok=True)
            with open(self._lock_path, "a+") as lk:
                fcntl.flock(lk, fcntl.LOCK_EX)
                try:
                    data = self.read()
                    yield data
                    tmp = f"{self.path}.tmp.{os.getpid()}"
                    with open(tmp, "w") as f:
                        json.dump(data, f, indent=1, sort_keys=True)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, self.path)
                finally:
                    fcntl.flock(lk, fcntl.LOCK_UN)

    # -- convenience --------------------------------------------------------------------
    def record(self, section: str, key: str, value: Any) -> None:
        with self.update() as d:
            d[section][key] = value

    def forget(self, section: str, key: str) -> None:
        with self.update() as d:
            d[section].pop(key, None)

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return self.read()[section].get(key, default)

    def append(self, section: str, value: Any) -> None:
        with self.update() as d:
            if value not in d[section]:
                d[section].append(value)

    def host_dir(self, host: str, *parts: str) -> str:
        """`<labdir>/hosts/<host>/<parts...>` (not created)."""
        return os.path.join(self.labdir, "hosts", host, *parts)

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def teardown(self, **kw: Any) -> dict[str, list[str]]:
        return teardown(self.labdir, prefix=self.prefix, **kw)


# ------------------------------------------------------------------------------------
# discovery helpers (also used by tests to assert that nothing is left)

def list_netns(prefix: str | None = None) -> list[str]:
    """Names of network namespaces in /run/netns (filtered by prefix)."""
    cp = run(["ip", "netns", "list"], check=False, timeout=10)
    names = [line.split()[0] for line in cp.stdout.splitlines() if line.strip()]
    return sorted(n for n in names if prefix is None or n.startswith(prefix))


def list_links(prefix: str | None = None, netns: str | None = None) -> list[str]:
    """Interface names in the root (or given) namespace (filtered by prefix)."""
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-o", "link", "show"]
    cp = run(argv, check=False, timeout=10)
    out = []
    for line in cp.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@")[0]
            if prefix is None or name.startswith(prefix):
                out.append(name)
    return sorted(out)


def list_mounts(*needles: str) -> list[str]:
    """Mount points of *this* mount namespace whose mount point or source contains one of
    the needles (read from /proc/self/mountinfo)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mnt = fields[4]
            root = fields[3]
            src = fields[fields.index("-") + 2] if "-" in fields else ""
            if any(n and (n in mnt or n in root or n in src) for n in needles):
                out.append(mnt)
    return out


def mounted_anywhere(path: str) -> bool:
    """True if `path` is a mount point in the mount namespace of any process (one
    /proc/PID/mountinfo read per distinct mount namespace)."""
    seen: set[str] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            mnt_ns = os.readlink(f"/proc/{entry}/ns/mnt")
            if mnt_ns in seen:
                continue
            seen.add(mnt_ns)
            with open(f"/proc/{entry}/mountinfo") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) > 4 and fields[4] == path:
                        return True
        except OSError:
            continue
    return False


def netns_pids(netns: str) -> list[int]:
    """Pids of all processes whose network namespace is `netns` (`ip netns pids`)."""
    cp = run(["ip", "netns", "pids", netns], check=False, timeout=10)
    return [int(x) for x in cp.stdout.split() if x.isdigit()]


# ------------------------------------------------------------------------------------
# teardown

def teardown(labdir: str = DEFAULT_LAB_DIR, *, prefix: str | None = None,
             sweep_prefix: bool = True, purge: bool = False,
             stop_timeout: float = 5.0) -> dict[str, list[str]]:
    """Remove everything the lab in `labdir` created, using its state file; safe to call
    repeatedly and after a crash of the process that built the lab.

    Order: stop recorded processes (TERM, bounded wait, KILL), kill any process left in
    the lab's namespaces, delete the namespaces (which destroys their veths, bridge,
    nftables rules, qdiscs), delete prefix-named interfaces left in the root namespace,
    unmount any lab mount found in the root mount namespace, remove the mountpoint
    directories the lab had to create on the real filesystem (only if still empty), and
    finally remove the state file (`purge=True` removes the whole labdir).

    With sweep_prefix (default) namespaces whose name starts with the prefix are removed
    even if the state file does not list them. Returns what was removed, by kind.
    """
    labdir = os.path.abspath(labdir)
    path = os.path.join(labdir, STATE_NAME)
    data: dict[str, Any] = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError):
            data = {}
    prefix = prefix or data.get("prefix") or DEFAULT_PREFIX
    removed: dict[str, list[str]] = {"processes": [], "namespaces": [], "interfaces": [],
                                     "mounts": [], "paths": [], "kept_paths": []}
    errors: list[str] = []

    # 1. recorded processes (stop politely; delayers and daemons)
    procs = data.get("processes", {}) or {}
    for key, p in sorted(procs.items()):
        try:
            res = stop_process(int(p["pid"]), p.get("starttime"), pgid=p.get("pgid"),
                               timeout=stop_timeout)
            removed["processes"].append(f"{key}:{p['pid']}:{res}")
        except (LabError, KeyError, ValueError) as e:
            errors.append(f"process {key}: {e}")

    # 2. namespaces: kill whatever still runs in them, then delete
    namespaces = set((data.get("namespaces") or {}).keys())
    if sweep_prefix:
        namespaces |= set(list_netns(prefix))
    # host namespaces first, WAN last (order does not matter for the kernel, only for logs)
    for ns in sorted(namespaces, key=lambda n: (n.endswith("wan"), n)):
        if not ns.startswith(prefix):
            errors.append(f"refusing to delete namespace {ns!r} without prefix {prefix!r}")
            continue
        for _ in range(3):
            pids = [p for p in netns_pids(ns) if p != os.getpid()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    removed["processes"].append(f"{ns}:{pid}:killed")
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and any(pid_matches(p, None) for p in pids):
                for p in pids:
                    reap(p)
                time.sleep(0.05)
        if ns in list_netns(prefix):
            cp = run(["ip", "netns", "del", ns], check=False, timeout=20)
            if cp.returncode == 0:
                removed["namespaces"].append(ns)
            else:
                errors.append(f"ip netns del {ns}: {cp.stderr.strip()}")

    # 3. interfaces in the root namespace (the lab creates none there, but a crash in the
    #    middle of a veth move could leave one)
    for name in list_links(prefix):
        cp = run(["ip", "link", "del", name], check=False, timeout=10)
        (removed["interfaces"] if cp.returncode == 0 else errors).append(
            name if cp.returncode == 0 else f"ip link del {name}: {cp.stderr.strip()}")

    # 4. mounts visible in the root mount namespace: netns bind mounts and anything
    #    sourced from the labdir (bind mounts are made in private mount namespaces, so
    #    normally there are none)
    for mnt in sorted(set(list_mounts(f"/run/netns/{prefix}", labdir + "/hosts/")),
                      key=len, reverse=True):
        cp = run(["umount", "-l", mnt], check=False, timeout=10)
        (removed["mounts"] if cp.returncode == 0 else errors).append(
            mnt if cp.returncode == 0 else f"umount {mnt}: {cp.stderr.strip()}")
    for ns in list(namespaces):
        f = f"/run/netns/{ns}"
        if os.path.exists(f) and ns not in list_mounts(f):
            with contextlib.suppress(OSError):
                os.unlink(f)

    # 5. mountpoints the lab had to create on the real filesystem (deepest first)
    for p in sorted(data.get("created_paths", []) or [], key=len, reverse=True):
        if mounted_anywhere(p):  # another lab's process still binds over it: keep
            removed["kept_paths"].append(f"{p} (still a mountpoint elsewhere)")
            continue
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                os.rmdir(p)  # only if empty
            elif os.path.isfile(p) and os.path.getsize(p) == 0:
                os.unlink(p)
            else:
                continue
            removed["paths"].append(p)
        except OSError as e:  # e.g. a package installed files there meanwhile: keep it
            removed["kept_paths"].append(f"{p} ({e.strerror})")

    # 6. the state itself
    if purge:
        shutil.rmtree(labdir, ignore_errors=True)
    else:
        for name in (STATE_NAME, ".state.lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(labdir, name))
        shutil.rmtree(os.path.join(labdir, "run"), ignore_errors=True)
    removed["errors"] = errors
    return removed


# ------------------------------------------------------------------------------------
# guaranteed teardown

class _Terminated(KeyboardInterrupt):
    """Raised from the SIGTERM/SIGHUP handler so `finally` blocks run. A subclass of
    KeyboardInterrupt, so pytest handles it like Ctrl-C (runs fixture teardown)."""


@contextlib.contextmanager
def lab_session(labdir: str = DEFAULT_LAB_DIR, prefix: str = DEFAULT_PREFIX, *,
                teardown_first: bool = True, purge: bool = False,
                keep: bool = False) -> Iterator[LabState]:
    """Context manager: yields a fresh LabState and guarantees teardown on exit, on an
    exception, on Ctrl-C (SIGINT) and on SIGTERM/SIGHUP (converted to an exception while
    the block runs), plus an atexit hook as a last resort. With teardown_first, leftovers
    of a previous crashed lab in the same labdir/prefix are removed before starting.
    keep=True skips the final teardown (for debugging; the state file stays)."""
    if teardown_first:
        teardown(labdir, prefix=prefix)
    state = LabState(labdir, prefix)
    done = False

    def _final() -> None:
        nonlocal done
        if done or keep:
            return
        done = True
        teardown(labdir, prefix=prefix, purge=purge)

    def _on_signal(signum: int, _frame: Any) -> None:
        raise _Terminated(f"signal {signum}")

    in_main = threading.current_thread() is threading.main_thread()
    old: dict[int, Any] = {}
    if in_main:
        for s in (signal.SIGTERM, signal.SIGHUP):
            old[s] = signal.signal(s, _on_signal)
    atexit.register(_final)
    try:
        yield state
    except _Terminated as e:
        raise SystemExit(128 + int(str(e).split()[-1])) from None
    finally:
        if in_main:  # no second signal may interrupt the teardown itself
            masked = {s: signal.signal(s, signal.SIG_IGN)
                      for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            _final()
        finally:
            atexit.unregister(_final)
            if in_main:
                for s, h in masked.items():
                    signal.signal(s, h)
                for s, h in old.items():
                    signal.signal(s, h)
