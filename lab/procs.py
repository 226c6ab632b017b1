"""Processes inside lab hosts, with VM-like paths.

How the paths work
------------------
Every command for a host runs as::

    ip netns exec <ns> sh -c '<bind loop>; exec "$@"' sh SRC1 DST1 SRC2 DST2 ... -- argv...

`ip netns exec` always unshares a new mount namespace for the command (it needs one to
remount /sys for the network namespace) and makes `/` a recursive *slave* of the host's
mounts. Inside that private mount namespace the wrapper bind-mounts each host directory
over its VM path (`mount --bind <labdir>/hosts/<host>/root/etc/mysql /etc/mysql`, ...)
and then execs the real command, which therefore sees `/etc/mysql`, `/var/lib/mysql`,
`/run/mysqld`, ... exactly as on a VM. Because the namespace is a slave, the bind mounts
never propagate back to the machine: the real /etc/mysql is untouched, and the mounts
vanish by themselves when the last process of that mount namespace exits (nothing to
unmount at teardown, even after a crash). Each command (daemon, client, one-shot) gets
its own mount namespace with the same binds, so they all agree on the paths.

We do not use `/etc/netns/<ns>/<name>` (which `ip netns exec` bind-mounts over
`/etc/<name>`): it only covers /etc, it writes into the real /etc/netns, and it would
apply to every command in the namespace including the lab's own tooling.

A VM path that does not exist on the machine needs a mountpoint: the lab creates the
missing directories (or an empty file for a file bind), records them in the state file
under `created_paths`, and teardown removes them again if they are still empty.

Daemons
-------
start() runs the command detached (setsid: its own session and process group; stdin
/dev/null; stdout/stderr appended to `<labdir>/hosts/<host>/log/<name>.log`), records
pid, start time and pgid in the state file and in `<labdir>/run/<host>/<name>.pid`.
stop() sends SIGTERM to the process group, waits (bounded), then SIGKILL. kill() sends
one signal (default SIGKILL) to the main pid only, like a crash.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from .state import LabState
from .util import (LabError, tail, pid_matches, proc_starttime, reap, run, spawn_detached,
                   stop_process, wait_for)

_BIND_WRAPPER = (
    'set -e\n'
    'while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do\n'
    '  mount --bind "$1" "$2"\n'
    '  shift 2\n'
    'done\n'
    'shift\n'
    'exec "$@"\n'
)
DEFAULT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C.UTF-8", "HOME": "/root"}
_FORBIDDEN_TARGETS = {"/", "/proc", "/sys", "/dev", "/run", "/etc", "/var", "/usr", "/tmp",
                      "/run/netns"}

__all__ = ["Procs", "wait_for"]


class Procs:
    """Processes of the lab in one LabState."""

    def __init__(self, state: LabState):
        self.state = state
        self._popen: dict[str, subprocess.Popen] = {}

    # -- hosts and paths ------------------------------------------------------------------
    def netns(self, host: str) -> str:
        h = self.state.read()["hosts"].get(host)
        if h is None:
            raise LabError(f"unknown lab host {host!r} (build the network first)")
        return h["netns"]

    def root_dir(self, host: str) -> str:
        """`<labdir>/hosts/<host>/root`: the host's private tree of VM paths."""
        return self.state.host_dir(host, "root")

    def make_root(self, host: str, vm_paths: Iterable[str]) -> dict[str, str]:
        """Create `<root_dir>/<vm path>` for each VM directory path and bind them (added to
        the host's existing binds). Returns the host's full VM path -> directory map."""
        mapping = {}
        for vm in vm_paths:
            vm = _clean_vm_path(vm)
            d = os.path.join(self.root_dir(host), vm.lstrip("/"))
            os.makedirs(d, exist_ok=True)
            mapping[vm] = d
        return self.set_binds(host, mapping)

    def set_binds(self, host: str, mapping: Mapping[str, str], replace: bool = False
                  ) -> dict[str, str]:
        """Declare VM path -> host path bind mounts for every later command on `host`.
        Sources must exist (directory or file). Missing VM paths are created on the real
        filesystem as empty mountpoints and recorded for teardown. Returns the new map."""
        self.netns(host)
        clean: dict[str, str] = {}
        for vm, src in mapping.items():
            vm = _clean_vm_path(vm)
            src = os.path.abspath(src)
            if not os.path.exists(src):
                raise LabError(f"bind source {src} does not exist")
            clean[vm] = src
        for vm, src in clean.items():
            self._ensure_mountpoint(vm, is_dir=os.path.isdir(src))
        with self.state.update() as d:
            cur = {} if replace else dict(d["binds"].get(host, {}))
            cur.update(clean)
            d["binds"][host] = cur
        return cur

    def binds(self, host: str) -> dict[str, str]:
        return dict(self.state.read()["binds"].get(host, {}))

    def host_path(self, host: str, vm_path: str) -> str:
        """Where a VM path of `host` lives on the machine (through the longest bind that
        covers it); the VM path itself if no bind covers it."""
        vm_path = os.path.normpath(vm_path)
        best = ""
        for vm in self.binds(host):
            if (vm_path == vm or vm_path.startswith(vm + "/")) and len(vm) > len(best):
                best = vm
        if not best:
            return vm_path
        return self.binds(host)[best] + vm_path[len(best):]

    def _ensure_mountpoint(self, vm: str, is_dir: bool) -> None:
        if os.path.exists(vm):
            if os.path.isdir(vm) != is_dir:
                raise LabError(f"{vm} exists but is not a {'directory' if is_dir else 'file'}")
            return
        # record first (crash-safe), then create each missing component
        missing = []
        p = vm
        while not os.path.exists(p):
            missing.append(p)
            p = os.path.dirname(p)
        for m in reversed(missing):
            self.state.append("created_paths", m)
        for m in reversed(missing):
            if m == vm and not is_dir:
                open(m, "a").close()
            else:
                os.makedirs(m, exist_ok=True)

    # -- commands -------------------------------------------------------------------------
    def command(self, host: str, argv: Sequence[str], *, binds: bool = True) -> list[str]:
        """The full argv that runs `argv` in the host's network namespace and, with binds,
        in a private mount namespace with the host's VM paths bind-mounted."""
        ns = self.netns(host)
        if not binds or not self.binds(host):
            return ["ip", "netns", "exec", ns, *argv]
        pairs: list[str] = []
        for vm, src in sorted(self.binds(host).items(), key=lambda kv: (kv[0].count("/"),
                                                                        kv[0])):
            pairs += [src, vm]
        return ["ip", "netns", "exec", ns, "sh", "-c", _BIND_WRAPPER, "sh", *pairs, "--",
                *argv]

    def run(self, host: str, argv: Sequence[str], *, timeout: float = 30.0,
            check: bool = True, input: str | None = None,
            env: Mapping[str, str] | None = None, binds: bool = True
            ) -> subprocess.CompletedProcess:
        """Run a command to completion inside the host (bounded by timeout)."""
        return run(self.command(host, argv, binds=binds), timeout=timeout, check=check,
                   input=input, env={**DEFAULT_ENV, **(env or {})})

    # -- daemons --------------------------------------------------------------------------
    def _key(self, host: str, name: str) -> str:
        if not name or "/" in name:
            raise ValueError(f"bad process name {name!r}")
        return f"{host}/{name}"

    def log_path(self, host: str, name: str) -> str:
        return self.state.host_dir(host, "log", f"{name}.log")

    def pidfile_path(self, host: str, name: str) -> str:
        return os.path.join(self.state.labdir, "run", host, f"{name}.pid")

    def start(self, host: str, name: str, argv: Sequence[str], *,
              env: Mapping[str, str] | None = None, cwd: str | None = None,
              pidfile: str | None = None, ready: Callable[[], Any] | None = None,
              ready_timeout: float = 30.0, binds: bool = True) -> dict[str, Any]:
        """Start a daemon detached (setsid) inside the host; record it.

        pidfile: the daemon's own pid file as a VM path, for daemons that fork: the
        recorded pid becomes the one written there. ready: predicate polled (bounded by
        ready_timeout) until truthy; raises LabError with the log tail if the process
        exits first. Returns the process record."""
        key = self._key(host, name)
        old = self.state.get("processes", key)
        if old and pid_matches(old["pid"], old.get("starttime")):
            raise LabError(f"{key} is already running (pid {old['pid']})")
        cmd = self.command(host, argv, binds=binds)
        log = self.log_path(host, name)
        with _mk(log) as f:
            f.write(f"--- {time.strftime('%F %T')} start: {' '.join(argv)}\n")
        p = spawn_detached(cmd, log_path=log, env={**DEFAULT_ENV, **(env or {})}, cwd=cwd)
        self._popen[key] = p
        rec: dict[str, Any] = {
            "pid": p.pid, "starttime": proc_starttime(p.pid), "pgid": p.pid,
            "netns": self.netns(host), "host": host, "name": name, "argv": list(argv),
            "log": log, "started": time.time(), "binds": self.binds(host) if binds else {}}
        self._save(key, rec)
        if pidfile:
            real = self.host_path(host, pidfile)

            def from_pidfile() -> int | None:
                try:
                    with open(real) as fh:
                        txt = fh.read().strip()
                    return int(txt) if txt.isdigit() and pid_matches(int(txt), None) else None
                except (OSError, ValueError):
                    return None

            pid = wait_for(from_pidfile, timeout=ready_timeout, interval=0.1,
                           what=f"pid file {pidfile} of {key}")
            rec.update(pid=pid, starttime=proc_starttime(pid), pgid=os.getpgid(pid),
                       pidfile=real)
            self._save(key, rec)
        if ready is not None:
            def check() -> Any:
                if not self.is_alive(host, name):
                    raise LabError(f"{key} exited before it was ready; log tail:\n"
                                   f"{tail(log)}")
                return ready()
            wait_for(check, timeout=ready_timeout, interval=0.1, what=f"{key} ready")
        return rec

    def _save(self, key: str, rec: dict[str, Any]) -> None:
        with self.state.update() as d:
            d["processes"][key] = rec
            d["mounts"] = [m for m in d["mounts"] if m.get("process") != key]
            for vm, src in rec.get("binds", {}).items():
                d["mounts"].append({"host": rec["host"], "process": key, "target": vm,
                                    "source": src, "pid": rec["pid"],
                                    "scope": "private mount namespace of the process"})
        pf = self.pidfile_path(rec["host"], rec["name"])
        os.makedirs(os.path.dirname(pf), exist_ok=True)
        with open(pf, "w") as f:
            f.write(f"{rec['pid']}\n")

    def _forget(self, key: str) -> None:
        with self.state.update() as d:
            rec = d["processes"].pop(key, None)
            d["mounts"] = [m for m in d["mounts"] if m.get("process") != key]
        if rec:
            try:
                os.unlink(self.pidfile_path(rec["host"], rec["name"]))
            except FileNotFoundError:
                pass
        p = self._popen.pop(key, None)
        if p is not None:
            try:
                p.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass

    def record(self, host: str, name: str) -> dict[str, Any] | None:
        return self.state.get("processes", self._key(host, name))

    def pid(self, host: str, name: str) -> int | None:
        rec = self.record(host, name)
        return rec["pid"] if rec else None

    def is_alive(self, host: str, name: str) -> bool:
        """True while the recorded process runs (zombies and reused pids count as dead)."""
        rec = self.record(host, name)
        if not rec:
            return False
        p = self._popen.get(self._key(host, name))
        if p is not None and p.pid == rec["pid"] and p.poll() is not None:
            return False
        reap(rec["pid"])
        return pid_matches(rec["pid"], rec.get("starttime"))

    def stop(self, host: str, name: str, timeout: float = 10.0) -> str:
        """SIGTERM to the process group, wait up to timeout s, then SIGKILL; forget it.
        Returns 'stopped', 'killed' or 'gone' (already dead / unknown)."""
        key = self._key(host, name)
        rec = self.record(host, name)
        if not rec:
            return "gone"
        res = stop_process(rec["pid"], rec.get("starttime"), pgid=rec.get("pgid"),
                           timeout=timeout)
        self._forget(key)
        return res

    def kill(self, host: str, name: str, sig: int = signal.SIGKILL) -> None:
        """Send one signal to the main pid only (default SIGKILL: a crash). The record
        stays (is_alive() turns False); stop() or teardown cleans up the rest."""
        rec = self.record(host, name)
        if not rec:
            raise LabError(f"no process {host}/{name}")
        if pid_matches(rec["pid"], rec.get("starttime")):
            try:
                os.kill(rec["pid"], sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGKILL:
            wait_for(lambda: not self.is_alive(host, name), timeout=5, interval=0.02,
                     what=f"{host}/{name} to die")

    def processes(self, host: str | None = None) -> dict[str, dict[str, Any]]:
        """Recorded processes (optionally of one host), each with an 'alive' flag."""
        out = {}
        for key, rec in self.state.read()["processes"].items():
            if host is None or rec.get("host") == host:
                out[key] = {**rec, "alive": pid_matches(rec["pid"], rec.get("starttime"))}
        return out

    def stop_all(self, host: str | None = None, timeout: float = 10.0) -> dict[str, str]:
        res = {}
        for key, rec in self.processes(host).items():
            if rec.get("name") == "ksl-delayer":
                continue  # owned by Network.clear_latency
            res[key] = self.stop(rec["host"], rec["name"], timeout=timeout)
        return res


def _clean_vm_path(vm: str) -> str:
    if not vm.startswith("/"):
        raise ValueError(f"VM path must be absolute: {vm!r}")
    norm = os.path.normpath(vm)
    if ".." in vm.split("/") or norm in _FORBIDDEN_TARGETS:
        raise ValueError(f"refusing to bind over {vm!r}")
    return norm


def _mk(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return open(path, "a")
