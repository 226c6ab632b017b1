"""`python -m lab net-up|net-status|net-down` (root).

For now only the network layer of the lab, on a built-in demo of 3 regions x 1 host:
a1 10.0.1.10/24 (region a), b1 10.0.2.10/24 (region b), c1 10.0.3.10/24 (region c).
The full `up|status|drill|down` will build on lab.net / lab.procs / lab.state.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from . import packages, testing
from .net import HostSpec, Network
from .state import DEFAULT_LAB_DIR, DEFAULT_PREFIX, LabState, list_netns, teardown

DEMO_HOSTS = [HostSpec(*h) for h in testing.DEMO_HOSTS]
DEMO_CIDRS = dict(testing.DEMO_CIDRS)


def _net_up(args: argparse.Namespace) -> int:
    if not args.no_install:
        installed = packages.ensure_net_tools()
        if installed:
            print(f"installed: {' '.join(installed)}")
    if os.path.exists(os.path.join(args.labdir, "state.json")) or list_netns(args.prefix):
        print(f"a lab already exists (state in {args.labdir} or {args.prefix}* namespaces): "
              f"run `python -m lab net-down` first", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    state = LabState(args.labdir, args.prefix)
    net = Network(state)
    try:
        net.build(DEMO_HOSTS, DEMO_CIDRS)
    except BaseException:
        print("build failed; tearing down what was created", file=sys.stderr)
        teardown(args.labdir, prefix=args.prefix)
        raise
    print(f"built in {time.monotonic() - t0:.2f}s; state file {state.path}")
    print(f"WAN namespace {net.wan_ns} with bridge {net.bridge}")
    for name, h in net.hosts().items():
        print(f"  host {name:4} region {h['region']}  ns {h['netns']:10} eth0 {h['address']:15}"
              f" wan-port {h['wan_if']:12} on-link routes {', '.join(h['routes'])}")
    names = sorted(net.hosts())
    for src in names:
        for dst in names:
            if src < dst:
                r = net.ping(src, dst, count=2, interval=0.2, timeout=3)
                print(f"  ping {src} -> {dst}: {r.received}/{r.sent} "
                      f"avg {r.avg_ms if r.avg_ms is not None else '-'} ms")
    return 0


def _net_status(args: argparse.Namespace) -> int:
    state_file = os.path.join(args.labdir, "state.json")
    if not os.path.exists(state_file):
        stray = list_netns(args.prefix)
        print(f"no lab state in {args.labdir}" +
              (f"; stray namespaces: {' '.join(stray)}" if stray else ""))
        return 1 if stray else 0
    net = Network(LabState(args.labdir, args.prefix))
    st = net.status()
    if args.json:
        print(json.dumps(st, indent=1, sort_keys=True))
        return 0
    print(f"WAN {st['wan']['netns']} present={st['wan']['present']}")
    for name, h in st["hosts"].items():
        print(f"  {name:4} region {h['region']} ns {h['netns']} present={h['present']} "
              f"eth0 [{h.get('eth0', '-')}] partition={h['partition']} "
              f"latency={h['latency']} link_down={h['link_down']}")
        for r in h.get("routes", []):
            print(f"       route {r}")
    if st["stray_namespaces"]:
        print(f"  stray namespaces: {' '.join(st['stray_namespaces'])}")
    return 0


def _net_down(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    res = teardown(args.labdir, prefix=args.prefix)
    errors = res.pop("errors", [])
    for kind, items in res.items():
        if items:
            print(f"removed {kind}: {' '.join(items)}")
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    left = list_netns(args.prefix)
    print(f"teardown took {time.monotonic() - t0:.2f}s; {args.prefix}* namespaces left: "
          f"{' '.join(left) or 'none'}")
    return 1 if (errors or left) else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab", description=__doc__.splitlines()[0])
    ap.add_argument("--labdir", default=DEFAULT_LAB_DIR,
                    help=f"lab state directory (default {DEFAULT_LAB_DIR}, env KSL_LAB_DIR)")
    ap.add_argument("--prefix", default=DEFAULT_PREFIX, help="name prefix (default ksl-)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("net-up", help="build the demo network (3 regions x 1 host)")
    up.add_argument("--no-install", action="store_true", help="skip apt-get for tools")
    stp = sub.add_parser("net-status", help="show what exists")
    stp.add_argument("--json", action="store_true")
    sub.add_parser("net-down", help="tear everything down (also after a crash)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m lab needs root (network namespaces)", file=sys.stderr)
        return 2
    return {"net-up": _net_up, "net-status": _net_status, "net-down": _net_down}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
