"""`python -m lab up|status|drill|down` (root): the local multi-region lab.

    up      render every node of lab/topology.yaml (or --topology), build one namespace
            per node, enforce the security groups, start the daemons, run the checks
    status  what runs where
    openstack [--os-cloud REGION] ARGS...
            python-openstackclient from the lab's user namespace (clouds.yaml: one cloud per region)
    drill   run the checks again and print what they measured (--report FILE: JSON)
    down    tear down every namespace, process and mount the lab started

`net-up|net-status|net-down` build only the network, on a 3-host demo.
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


def _deployment(args: argparse.Namespace):
    from keystone_multiregion.topology import load_topology_file

    from . import Lab
    from .deployment import LabDeployment
    return LabDeployment(Lab(args.labdir, args.prefix), load_topology_file(args.topology), args.topology)


def _print_checks(checks) -> int:
    for c in checks:
        print("  " + c.line())
    failed = [c for c in checks if not c.ok]
    print(f"checks: {len(checks) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _up(args: argparse.Namespace) -> int:
    if os.path.exists(os.path.join(args.labdir, "state.json")) or list_netns(args.prefix):
        print(f"a lab already exists (state in {args.labdir}): `python -m lab status`, "
              "or `python -m lab down` first", file=sys.stderr)
        return 1
    dep = _deployment(args)
    try:
        dep.up(install=not args.no_install, wan_latency_ms=args.wan_latency_ms)
    except BaseException:
        print("lab up failed; tearing down what was created", file=sys.stderr)
        teardown(args.labdir, prefix=args.prefix)
        raise
    for line in dep.status():
        print("  " + line)
    rc = _print_checks(dep.checks())
    print("the lab keeps running: `./run lab status`, `./run lab drill`, `./run lab down`")
    return rc


def _status(args: argparse.Namespace) -> int:
    if not os.path.exists(os.path.join(args.labdir, "state.json")):
        print(f"no lab is up (no state in {args.labdir}); start one with `./run lab up`")
        return 1
    dep = _deployment(args)
    for line in dep.status():
        print("  " + line)
    from . import catalog, monitoring
    if catalog.USER_HOST in dep.lab.net.hosts():
        print(f"  client: `./run lab openstack ...` in namespace {dep.lab.net.netns(catalog.USER_HOST)}, "
              f"clouds.yaml in {catalog.client_dir(dep)}")
    if dep.lab.procs.is_alive("ops", "prometheus"):
        seen = monitoring.targets(dep)
        firing = sorted({a["labels"]["alertname"] for a in monitoring.alerts(dep) if a["state"] == "firing"})
        print(f"  Prometheus: {monitoring.prometheus_url(dep)} (from the ops namespace), "
              f"{sum(v == 'up' for v in seen.values())} of {len(seen)} exporters up, "
              f"alerts firing: {', '.join(firing) or 'none'}")
    if args.picture:
        from keystone_multiregion.picture import render_png, topology_dot
        live = dep.live_state()
        dot = topology_dot(dep.topo, live)
        if args.picture.endswith(".dot"):
            with open(args.picture, "w") as fh:
                fh.write(dot)
        else:
            render_png(dot, args.picture)
        print(f"{args.picture}: VIP holders, Galera members and writers as they are now"
              + (f"; down: {', '.join(live['down'])}" if live["down"] else ""))
    return 0


def _drill(args: argparse.Namespace) -> int:
    if not os.path.exists(os.path.join(args.labdir, "state.json")):
        print(f"no lab is up (no state in {args.labdir}); start one with `./run lab up`", file=sys.stderr)
        return 1
    from .drills import GaleraDrills, report

    dep = _deployment(args)
    checks = dep.checks()
    rc = _print_checks(checks)
    print("galera drills:")
    galera = GaleraDrills(dep)
    results = galera.run_all(log=lambda line: print("  " + line, flush=True))
    from .proxy_drills import ProxyDrills
    print("proxy drills:")
    results += ProxyDrills(dep).run_all(log=lambda line: print("  " + line, flush=True))
    if any(rec["name"] == "keystone" for rec in dep.lab.procs.processes().values()):
        from .keystone_drills import KeystoneDrills
        print("keystone drills:")
        results += KeystoneDrills(dep).run_all(galera, log=lambda line: print("  " + line, flush=True))
        from .change_drills import ChangeDrills
        print("change drills (pushes to running nodes, under load):")
        results += ChangeDrills(dep).run_all(log=lambda line: print("  " + line, flush=True))
    from . import monitoring
    if dep.lab.procs.is_alive("ops", "prometheus"):
        print("monitoring drills (the lab's Prometheus and the shipped alerts):")
        results += monitoring.MonitoringDrills(dep).run_all(log=lambda line: print("  " + line, flush=True))
    if dep.topo.backup is not None and dep.running("keystone"):
        # Last: B2 and B3 replace the cluster with one restored from a backup.
        from .backup_drills import BackupDrills
        print("backup drills (the lab's Swift; B2 and B3 restore the whole cluster):")
        results += BackupDrills(dep).run_all(log=lambda line: print("  " + line, flush=True))
    failed = [r for r in results if not r.ok]
    print(f"drills: {len(results) - len(failed)} passed, {len(failed)} failed")
    if args.report:
        with open(args.report, "w") as fh:
            json.dump({"checks": [c.__dict__ for c in checks], **report(results)}, fh, indent=2)
        print(f"report written to {args.report}")
    return 1 if (rc or failed) else 0


def _openstack(args: argparse.Namespace) -> int:
    if not os.path.exists(os.path.join(args.labdir, "state.json")):
        print(f"no lab is up (no state in {args.labdir}); start one with `./run lab up`", file=sys.stderr)
        return 1
    from . import catalog
    dep = _deployment(args)
    if catalog.USER_HOST not in dep.lab.net.hosts():
        print("this lab has no user namespace (it was started before it existed): `./run lab down`, `./run lab up`",
              file=sys.stderr)
        return 1
    out = catalog.openstack(dep, args.args, timeout=600)
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    return out.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab", description=__doc__.splitlines()[0])
    ap.add_argument("--labdir", default=DEFAULT_LAB_DIR,
                    help=f"lab state directory (default {DEFAULT_LAB_DIR}, env KSL_LAB_DIR)")
    ap.add_argument("--prefix", default=DEFAULT_PREFIX, help="name prefix (default ksl-)")
    from .deployment import LAB_TOPOLOGY
    ap.add_argument("--topology", default=str(LAB_TOPOLOGY), help="topology file (default lab/topology.yaml)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    lab_up = sub.add_parser("up", help="bring up the lab of the topology")
    lab_up.add_argument("--no-install", action="store_true", help="skip apt-get")
    lab_up.add_argument("--wan-latency-ms", type=float, default=0,
                        help="delay between regions, each way (e.g. 50 for a 100 ms round trip)")
    st = sub.add_parser("status", help="what runs where")
    st.add_argument("--picture", metavar="FILE", help="also draw it: FILE.png (Graphviz), or FILE.dot")
    ops = sub.add_parser("openstack", help="python-openstackclient where a user sits (clouds.yaml of the lab)")
    ops.add_argument("args", nargs="*", help="e.g. --os-cloud lab-b catalog list (all of them go to openstack)")
    drill = sub.add_parser("drill", help="run the checks against the running lab")
    drill.add_argument("--report", help="also write the results as JSON to this file")
    sub.add_parser("down", help="tear everything down (also after a crash)")
    up = sub.add_parser("net-up", help="build the demo network (3 regions x 1 host)")
    up.add_argument("--no-install", action="store_true", help="skip apt-get for tools")
    stp = sub.add_parser("net-status", help="show what exists")
    stp.add_argument("--json", action="store_true")
    sub.add_parser("net-down", help="tear everything down (also after a crash)")
    argv = sys.argv[1:] if argv is None else list(argv)
    client_args = []
    if "openstack" in argv:  # everything after it is the client's, options included
        at = argv.index("openstack")
        argv, client_args = argv[:at + 1], argv[at + 1:]
    args = ap.parse_args(argv)
    if args.cmd == "openstack":
        args.args = client_args
    if os.geteuid() != 0:
        print("python -m lab needs root (network namespaces)", file=sys.stderr)
        return 2
    return {"up": _up, "status": _status, "openstack": _openstack, "drill": _drill, "down": _net_down,
            "net-up": _net_up, "net-status": _net_status, "net-down": _net_down}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
