"""Helpers for tests of (and with) the lab: what could be left behind, and assertions
that nothing is. Used by tests/lab; importable by later lab tests too."""
from __future__ import annotations

import os

from .state import list_links, list_mounts, list_netns
from .util import pid_matches

# the demo lab: 3 regions x 1 host (name, region, address)
DEMO_HOSTS = [("a1", "a", "10.0.1.10/24"), ("b1", "b", "10.0.2.10/24"),
              ("c1", "c", "10.0.3.10/24")]
DEMO_CIDRS = {"a": "10.0.1.0/24", "b": "10.0.2.0/24", "c": "10.0.3.0/24"}


def snapshot(prefix: str, labdir: str) -> dict[str, set[str]]:
    """Namespaces and root-namespace interfaces named with `prefix`, and mounts of this
    mount namespace under /run/netns/<prefix>* or sourced from labdir."""
    return {"netns": set(list_netns(prefix)), "links": set(list_links(prefix)),
            "mounts": set(list_mounts(f"/run/netns/{prefix}", os.path.abspath(labdir)))}


def ns_inode(ns: str) -> int | None:
    """Inode of a named network namespace (identifies it in /proc/PID/ns/net)."""
    try:
        return os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return None


def pids_in_netns(inodes: set[int | None]) -> list[int]:
    """Pids of all processes whose network namespace is one of the given inodes."""
    want = {f"net:[{i}]" for i in inodes if i}
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/net") in want:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def recorded(lab) -> tuple[set[int | None], list[tuple[int, int | None]]]:
    """What a running lab's teardown must leave nothing of: its namespaces' inodes, and its
    recorded processes as (pid, start time) (a pid alone may be another process's by the
    end of a long run: pids wrap at pid_max, 32768 on our machines)."""
    st = lab.state.read()
    return ({ns_inode(ns) for ns in st["namespaces"]},
            [(rec["pid"], rec.get("starttime")) for rec in st["processes"].values()])


def leftovers(prefix: str, labdir: str, inodes: set[int | None] = frozenset(),
              pids: list = ()) -> dict[str, object]:
    """Everything of a lab still present; all values empty when teardown was complete.
    `pids`: pids, or (pid, start time) pairs (then a reused pid is not counted)."""
    left: dict[str, object] = dict(snapshot(prefix, labdir))
    left["netns_processes"] = pids_in_netns(set(inodes))
    pairs = [p if isinstance(p, tuple) else (p, None) for p in pids]
    left["alive_pids"] = [p for p, start in pairs if pid_matches(p, start)]
    return left


def assert_clean(prefix: str, labdir: str, inodes: set[int | None] = frozenset(),
                 pids: list = ()) -> None:
    left = leftovers(prefix, labdir, inodes, pids)
    assert not any(left.values()), f"lab leftovers: {left}"
