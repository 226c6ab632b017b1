"""The lab's stand-in for systemctl, for node-agent on the lab's nodes.

A VM runs its daemons under systemd, and node-agent asks `systemctl reload haproxy`. The
lab runs them as its own processes in namespaces, so each node gets a file at
/etc/keystone-multiregion/service-manager (bind-mounted, lab only) naming a small script
that runs this module: the agent's code is the same, only the command it calls differs.
Each verb does what the unit on a VM does:

    reload haproxy       SIGUSR2 to the master (Debian's haproxy.service ExecReload)
    reload keepalived    SIGHUP (keepalived.service ExecReload)
    reload keystone-api  SIGHUP to uwsgi's master (our keystone-api.service ExecReload)
    restart memcached | mariadb | garb | prometheus-*-exporter | replica-health | replica-watch
                         stop, then start as the lab does
    stop UNIT            SIGTERM, then wait for the process to end (node-agent leave)
    disable UNIT         nothing to do (the lab starts nothing at boot)
    is-active UNIT       exit 0 while the process runs
    daemon-reload        nothing to do

    python -m lab.service --labdir D --prefix P --topology T --host NODE VERB [UNIT]
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import stat
import sys
from pathlib import Path

# unit -> the lab's process name for it
PROCESSES = {"haproxy": "haproxy", "keepalived": "keepalived", "keystone-api": "keystone", "memcached": "memcached",
             "mariadb": "mariadb", "garb": "garbd", "galera-health": "health",
             "replica-health": "health", "replica-watch": "watch",
             "prometheus-mysqld-exporter": "mysqld-exporter", "prometheus-node-exporter": "node-exporter"}
# How long a stop waits for the daemon to end (MariaDB's clean shutdown: it leaves the cluster).
STOP_TIMEOUT_S = {"mariadb": 300}
RELOAD_SIGNALS = {"haproxy": signal.SIGUSR2, "keepalived": signal.SIGHUP, "keystone-api": signal.SIGHUP}
VM_PATH = "/etc/keystone-multiregion/service-manager"


def unit_values(path: str, key: str) -> list[str]:
    """Every value of `key` in a unit file or drop-in, in order (a missing file has none)."""
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        name, sep, value = line.strip().partition("=")
        if sep and name.strip() == key and value.strip():
            out.append(value.strip())
    return out


def exec_lines(path: str, key: str) -> list[list[str]]:
    """The command lines of `key` (ExecStart, ExecStartPost, ExecStopPost, ...) in a unit file
    or drop-in, in order, as systemd would run them: its prefixes (-@:+!) dropped, the rest
    split as systemd splits it (shell-like quoting)."""
    return [shlex.split(value.lstrip("-@:+!")) for value in unit_values(path, key)]


def shim(dep, host: str) -> tuple[str, str]:
    """(the script for `host`, the file naming it) written under the lab directory; the file
    is bound at VM_PATH in the node."""
    base = Path(dep.lab.labdir) / "service-manager" / host
    base.mkdir(parents=True, exist_ok=True)
    script = base / "systemctl"
    root = Path(__file__).resolve().parent.parent
    script.write_text("#!/bin/sh\n# The lab's systemctl for this node (lab/service.py).\n"
                      f"cd {root} && exec {sys.executable} -m lab.service --labdir {dep.lab.labdir} "
                      f"--prefix {dep.lab.prefix} --topology {dep.topology_path} --host {host} \"$@\"\n")
    os.chmod(script, stat.S_IRWXU)
    pointer = base / "service-manager"
    pointer.write_text(f"{script}\n")
    return str(script), str(pointer)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="systemctl (lab)")
    for flag in ("--labdir", "--prefix", "--topology", "--host"):
        parser.add_argument(flag, required=True)
    parser.add_argument("verb")
    parser.add_argument("unit", nargs="?")
    args = parser.parse_args(argv)
    if args.verb == "daemon-reload":
        return 0
    unit = (args.unit or "").removesuffix(".service")
    if unit not in PROCESSES:
        print(f"systemctl (lab): unknown unit {args.unit!r}", file=sys.stderr)
        return 5
    from keystone_multiregion.topology import load_topology_file

    from . import Lab
    from .deployment import LabDeployment
    dep = LabDeployment(Lab(args.labdir, args.prefix), load_topology_file(args.topology), args.topology)
    procs, name = dep.lab.procs, PROCESSES[unit]
    if args.verb == "is-active":
        return 0 if procs.is_alive(args.host, name) else 3
    if args.verb == "reload":
        rec = procs.record(args.host, name)
        if unit not in RELOAD_SIGNALS or not rec or not procs.is_alive(args.host, name):
            print(f"systemctl (lab): {unit} is not running on {args.host}", file=sys.stderr)
            return 1
        os.kill(rec["pid"], RELOAD_SIGNALS[unit])
        return 0
    if args.verb == "restart":
        dep.restart_service(args.host, unit)
        return 0
    if args.verb == "stop":
        procs.stop(args.host, name, timeout=STOP_TIMEOUT_S.get(unit, 30))
        return 0
    if args.verb == "disable":
        return 0
    print(f"systemctl (lab): unknown verb {args.verb!r}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
