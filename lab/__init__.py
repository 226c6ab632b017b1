"""Local lab for keystone-multiregion: network namespaces as regions, processes with
VM-like paths, a crash-safe state file and teardown.

    from lab import session, HostSpec
    with session("/var/tmp/ksl-dev") as lab:          # teardown guaranteed on exit
        lab.net.build([HostSpec("a1", "a", "10.0.1.10/24"),
                       HostSpec("b1", "b", "10.0.2.10/24")])
        print(lab.net.ping("a1", "b1").avg_ms)

Modules: lab.net (namespaces, partitions, latency), lab.procs (daemons in namespaces
with bind-mounted VM paths), lab.state (state file, teardown, lab_session),
lab.packages (apt/pip installs), lab.delayer (NFQUEUE delay process).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

from .net import HostSpec, Network, PingResult
from .procs import Procs
from .state import DEFAULT_LAB_DIR, DEFAULT_PREFIX, LabState, lab_session, teardown
from .util import LabError, wait_for

__all__ = ["Lab", "session", "HostSpec", "Network", "PingResult", "Procs", "LabState",
           "lab_session", "teardown", "LabError", "wait_for", "DEFAULT_LAB_DIR",
           "DEFAULT_PREFIX"]


class Lab:
    """One lab: its state file, network and processes."""

    def __init__(self, labdir: str = DEFAULT_LAB_DIR, prefix: str = DEFAULT_PREFIX,
                 state: LabState | None = None):
        self.state = state or LabState(labdir, prefix)
        self.net = Network(self.state)
        self.procs = Procs(self.state)

    @property
    def labdir(self) -> str:
        return self.state.labdir

    @property
    def prefix(self) -> str:
        return self.state.prefix

    def teardown(self, **kw: Any) -> dict[str, list[str]]:
        return teardown(self.state.labdir, prefix=self.state.prefix, **kw)


@contextlib.contextmanager
def session(labdir: str = DEFAULT_LAB_DIR, prefix: str = DEFAULT_PREFIX,
            **kw: Any) -> Iterator[Lab]:
    """A Lab whose teardown is guaranteed (exceptions, Ctrl-C, SIGTERM, SIGHUP, exit);
    see lab.state.lab_session for the keyword arguments."""
    with lab_session(labdir, prefix, **kw) as st:
        yield Lab(state=st)
