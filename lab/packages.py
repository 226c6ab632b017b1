"""Install what the lab needs, and only what is missing.

ensure_packages() asks dpkg-query which Debian packages are installed, runs
`apt-get update` at most once per process, then
`DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends` for the
missing ones only. ensure_delayer() adds what the NFQUEUE delayer needs (Debian's
libnetfilter-queue-dev + gcc, and PyPI's NetfilterQueue for this interpreter) when the
kernel has no netem qdisc.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import Iterable, Sequence

from .util import LabError, run

NET_PACKAGES = ["iproute2", "nftables", "iptables", "iputils-ping", "util-linux", "procps"]
DELAYER_DEBS = ["libnetfilter-queue-dev", "gcc"]
DELAYER_PIP = "NetfilterQueue"
POLICY_RC_D = "/usr/sbin/policy-rc.d"

_updated = False


def missing_packages(packages: Iterable[str]) -> list[str]:
    """The packages of the list that dpkg does not report as installed ('ii')."""
    pkgs = list(dict.fromkeys(packages))
    if not pkgs:
        return []
    cp = run(["dpkg-query", "-W", "-f", "${Package}\t${db:Status-Abbrev}\n", *pkgs],
             check=False, timeout=60)
    installed = set()
    for line in cp.stdout.splitlines():
        name, _, status = line.partition("\t")
        if status.startswith("ii"):
            installed.add(name.split(":")[0])
    return [p for p in pkgs if p.split(":")[0] not in installed]


def apt_update(timeout: float = 600) -> None:
    """`apt-get update`, at most once per process."""
    global _updated
    if _updated:
        return
    run(["apt-get", "update", "-q"], timeout=timeout,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    _updated = True


def ensure_packages(packages: Sequence[str], *, timeout: float = 1800,
                    verbose: bool = True) -> list[str]:
    """Install the missing ones of `packages` (Debian names). Returns what was installed
    (empty if nothing was missing). Needs root."""
    missing = missing_packages(packages)
    if not missing:
        return []
    if os.geteuid() != 0:
        raise LabError(f"missing packages {missing} and not root")
    if verbose:
        print(f"lab: installing {' '.join(missing)}", file=sys.stderr, flush=True)
    apt_update()
    # The lab starts every daemon itself, inside its namespaces: no package may start its
    # service on the machine (openssh-server would listen on its port 22). Debian's
    # policy-rc.d hook denies that; add one for the install if the machine has none.
    guard = None
    if not os.path.exists(POLICY_RC_D):
        guard = POLICY_RC_D
        with open(guard, "w") as fh:
            fh.write("#!/bin/sh\n# keystone-multiregion lab: no service starts during package installs\nexit 101\n")
        os.chmod(guard, 0o755)
    try:
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            timeout=timeout, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    finally:
        if guard:
            os.unlink(guard)
    still = missing_packages(missing)
    if still:
        raise LabError(f"apt-get install finished but still missing: {still}")
    return missing


def have_module(module: str, python: str | None = None) -> bool:
    """True if `module` imports in `python` (default: this interpreter)."""
    if python is None or os.path.realpath(python) == os.path.realpath(sys.executable):
        return importlib.util.find_spec(module) is not None
    cp = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60)
    return cp.returncode == 0


def ensure_pip(package: str, module: str, python: str | None = None,
               timeout: float = 600) -> bool:
    """`python -m pip install package` unless `module` already imports. Returns True if it
    installed something."""
    py = python or sys.executable
    if have_module(module, py):
        return False
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", package],
        timeout=timeout)
    importlib.invalidate_caches()
    if not have_module(module, py):
        raise LabError(f"pip installed {package} but `import {module}` still fails")
    return True


def ensure_net_tools() -> list[str]:
    """The commands lab.net and lab.procs run: ip, tc, nft, iptables, ping, mount."""
    return ensure_packages(NET_PACKAGES)


def ensure_delayer(python: str | None = None) -> list[str]:
    """Debian + PyPI packages for lab/delayer.py. Returns what was installed."""
    done = ensure_packages(DELAYER_DEBS)
    if os.path.realpath(python or sys.executable).startswith("/usr/bin/"):
        done += ensure_packages(["python3-dev"])  # headers for Debian's own python
    if ensure_pip(DELAYER_PIP, "netfilterqueue", python):
        done.append(f"pip:{DELAYER_PIP}")
    return done


def ensure_lab_base(prefix: str = "ksl-", python: str | None = None) -> dict[str, object]:
    """Net tools always; the delayer's packages only if the kernel lacks netem.
    Returns {'installed': [...], 'netem': bool}."""
    from .net import probe_netem  # late: needs `ip` installed first

    installed = ensure_net_tools()
    netem = probe_netem(prefix)
    if not netem:
        installed += ensure_delayer(python)
    return {"installed": installed, "netem": netem}
