"""Command line of the core: validate the topology and render nodes offline.

    python -m keystone_multiregion validate [--topology topology.yaml]
    python -m keystone_multiregion render --stack region-a [--out build/render] [--secrets FILE]
    python -m keystone_multiregion render --all [--out build/render]
    python -m keystone_multiregion [--topology NEW.yaml] plan (--from OLD.yaml | --from-git REV)
    python -m keystone_multiregion monitoring [--out build/monitoring] [--rules-dir /etc/prometheus]
    python -m keystone_multiregion recover-plan REPORT.json [REPORT.json ...] [--accept-missing]
    python -m keystone_multiregion gate --region R --url https://HOST [--address IP ...] [--ca FILE]
        [--samples N] [--wait SECONDS]
    python -m keystone_multiregion import-keys --fernet DIR --credential DIR --out FILE [--stack shared]

The render needs neither a cloud nor the Pulumi CLI. Without --secrets, secrets are
written as visible placeholders (<secret:NAME>), so the output is safe to diff in a pull
request; the local lab passes a secrets file of its own. The gate (gate.py) needs
neither the topology nor Pulumi: it asks a region's public endpoint who answers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from . import changes, gate
from .recovery import RecoveryError, check_reports, most_advanced
from .render import NOVA_USER_DATA_LIMIT, render_region, user_data_sizes, write_rendered
from .secrets import SecretsError, placeholder_secrets
from .security import project_usage
from .stacks import region_stacks, stack_config
from .topology import TopologyError, load_topology, load_topology_file

PROJECT_DIR = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keystone_multiregion", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default=str(PROJECT_DIR / "topology.yaml"), help="topology file")
    parser.add_argument("--project-dir", default=str(PROJECT_DIR), help="where the Pulumi.<stack>.yaml files are")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("validate", help="validate the topology and the region stacks' files, and print a summary")
    render = sub.add_parser("render", help="render every node of a stack (or all stacks) into a directory")
    which = render.add_mutually_exclusive_group(required=True)
    which.add_argument("--stack", help="a region stack, e.g. region-a")
    which.add_argument("--region", help="a region of the topology (no stack file needed)")
    which.add_argument("--all", action="store_true", help="every region of the topology")
    which.add_argument("--picture", metavar="FILE", help="draw the topology instead: FILE.png (Graphviz), or "
                                                         "FILE.dot for the DOT text")
    render.add_argument("--out", default="build/render", help="output directory (replaced per region)")
    render.add_argument("--secrets", help="YAML map of secret name -> value (default: placeholders)")
    mon = sub.add_parser("monitoring", help="write prometheus.yml and the alert rules for this topology")
    mon.add_argument("--out", default="build/monitoring", help="output directory")
    mon.add_argument("--rules-dir", default="/etc/prometheus",
                     help="where your Prometheus will find the rules file (prometheus.yml names it)")
    change = sub.add_parser("plan", help="the order of a change to a running deployment, every step checked")
    source = change.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="old", help="the topology file the deployment runs now")
    source.add_argument("--from-git", dest="old_rev", help="the topology file at this git revision (e.g. HEAD~1)")
    plan = sub.add_parser("recover-plan", help="full-outage recovery: the node to bootstrap from")
    plan.add_argument("reports", nargs="+", help="files with the JSON `galera-node recover-report` printed")
    plan.add_argument("--accept-missing", action="store_true",
                      help="plan without the reports of some nodes (their data is lost for good)")
    check = sub.add_parser("gate", help="rollout gate: fail unless the region's endpoint answers from the region itself")
    check.add_argument("--region", required=True, help="the region the stack deploys (its `region` output)")
    check.add_argument("--url", required=True, help="the region's public endpoint, e.g. https://identity.region-a.example.com")
    check.add_argument("--address", action="append", default=[],
                       help="connect to this address (a public VIP) instead of the URL's host; repeat for every VIP")
    check.add_argument("--ca", help="CA bundle that verifies the endpoint (default: the system's)")
    check.add_argument("--samples", type=int, default=5, help="requests per path and address (default 5)")
    check.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    check.add_argument("--wait", type=float, default=0.0,
                       help="repeat a failed round until this many seconds have passed (default 0: one round)")
    check.add_argument("--interval", type=float, default=15.0, help="seconds between rounds (default 15)")
    imp = sub.add_parser("import-keys", help="moving an existing Keystone in: check its Fernet and credential key "
                                             "repositories and write the shared stack's importedKeys config")
    imp.add_argument("--fernet", required=True, help="a copy of the source's Fernet key directory")
    imp.add_argument("--credential", required=True, help="a copy of the source's credential key directory")
    imp.add_argument("--out", required=True, help="new file (0600) for the config value: it holds the keys")
    imp.add_argument("--stack", default="shared", help="the shared stack (its rotation counters are recorded)")
    args = parser.parse_args(argv)

    if args.command == "import-keys":
        return _import_keys(args)
    if args.command == "gate":
        try:
            ok, line = gate.run(args.region, args.url, args.address, args.ca, args.samples, timeout=args.timeout,
                                wait=args.wait, interval=args.interval, log=lambda s: print(s, flush=True))
        except gate.GateError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(line if ok else f"error: {line}; the rollout stops here", file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    try:
        topo = load_topology_file(args.topology)
        if args.command == "plan":
            return _plan(args, topo)
        if args.command == "monitoring":
            from .monitoring import RULES_FILE, alert_rules, prometheus_config
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(topo, args.rules_dir), sort_keys=False))
            (out / RULES_FILE).write_text(yaml.safe_dump(alert_rules(topo), sort_keys=False))
            print(f"{out}/prometheus.yml: {len(topo.nodes(role='galera'))} Galera and {len(topo.nodes(role='proxy'))} "
                  f"proxy exporters; {out}/{RULES_FILE}: {len(alert_rules(topo)['groups'][0]['rules'])} alerts")
            return 0
        if args.command == "recover-plan":
            reports = [json.loads(Path(p).read_text().strip().splitlines()[-1]) for p in args.reports]
            boot = topo.nodes(topo.bootstrap_region, "galera")[0].name
            missing = check_reports(reports, [n.name for n in topo.nodes(role="galera")], args.accept_missing)
            node = most_advanced(reports, preferred=boot)
            for name in missing:
                print(f"  {name}: NO REPORT (accepted with --accept-missing)")
            for r in sorted(reports, key=lambda r: r["node"]):
                print(f"  {r['node']}: seqno {r.get('seqno')}, safe_to_bootstrap {r.get('safe_to_bootstrap')}, "
                      f"data volume {r.get('data_volume', 'not reported')}")
            print(f"bootstrap from {node}: run `galera-node bootstrap-here` there, then start MariaDB on the others")
            return 0
        if args.command == "validate":
            # Every region stack must name a region of the topology, as `pulumi up` would check.
            stacks = region_stacks(Path(args.project_dir))
            for stack, region in stacks.items():
                topo.region(region, source=f"Pulumi.{stack}.yaml: keystone-multiregion:region")
            voters = topo.galera_voters
            print(f"{args.topology}: valid. {len(topo.regions)} regions, {voters} Galera voters, "
                  f"bootstrap region {topo.bootstrap_region}")
            for r in topo.regions:
                counts = ", ".join(f"{role} {spec.count}" for role, spec in r.roles.items())
                use = project_usage(topo, r.name)
                print(f"  {r.name} (index {r.index}, {r.cidr}): {counts}; security group rules "
                      f"{use.rules} of {topo.quotas.security_group_rules}, groups {use.groups} of "
                      f"{topo.quotas.security_groups}")
            print("  stacks: " + (", ".join(f"{s} -> {r}" for s, r in stacks.items()) or "none"))
            # Every node's cloud-init as Nova gets it (gzip + base64), against Nova's limit. The
            # secrets are placeholders here (real certificates and keys add about 2 KB to a Galera
            # node's); the stack checks the real document at preview.
            sizes = user_data_sizes(topo, placeholder_secrets([n.name for n in topo.nodes()],
                                                              [r.name for r in topo.regions]))
            print(f"  user data with placeholder secrets, largest per role (of Nova's {NOVA_USER_DATA_LIMIT} "
                  "bytes): " + ", ".join(f"{role} {size} ({node})" for role, (size, node) in sorted(sizes.items())))
            b = topo.backup
            if b is None:
                print("  WARNING: no backup section: nothing undoes a mistake that replicates to every region; "
                      "add backup.store to topology.yaml (README: Backups and point-in-time recovery)")
            else:
                print(f"  backups: full every {b.full_interval_h} h, incremental every {b.incremental_interval_h} h, "
                      f"kept {b.keep_days} days, into {b.container_prefix}-<region> at {b.store.auth_url}")
            return 0
        if args.picture:
            from .picture import render_png, topology_dot
            dot = topology_dot(topo)
            if args.picture.endswith(".dot"):
                Path(args.picture).write_text(dot)
            else:
                render_png(dot, args.picture)
            print(f"{args.picture}: {len(topo.regions)} regions, {len(topo.nodes())} nodes, "
                  f"{sum(len(topo.vips(r.name)) for r in topo.regions)} VIPs (the topology's plan)")
            return 0
        if args.all:
            regions = [r.name for r in topo.regions]
        elif args.region:
            regions = [topo.region(args.region, source="--region").name]
        else:
            region = stack_config(Path(args.project_dir), args.stack).get("region")
            if not region:
                known = ", ".join(region_stacks(Path(args.project_dir)))
                raise ValueError(f"stack {args.stack!r} is not a region stack (region stacks: {known})")
            regions = [topo.region(region, source=f"Pulumi.{args.stack}.yaml: keystone-multiregion:region").name]
        secrets = placeholder_secrets([n.name for n in topo.nodes()], [r.name for r in topo.regions])
        if args.secrets:
            secrets = yaml.safe_load(Path(args.secrets).read_text()) or {}
        out = Path(args.out)
        for region in regions:
            shutil.rmtree(out / region, ignore_errors=True)
            for rendered in render_region(topo, region, secrets):
                node_dir = write_rendered(rendered, out)
                print(f"{node_dir}: user-data and {len(rendered.files)} files")
        return 0
    except (TopologyError, SecretsError, RecoveryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _import_keys(args) -> int:
    from .migration import (IMPORTED_KEYS_CONFIG, SETTING, KeyImportError, imported_value, read_key_dir, summary,
                            write_secret_file)
    try:
        fernet = read_key_dir("--fernet", args.fernet)
        credential = read_key_dir("--credential", args.credential)
        try:
            config = stack_config(Path(args.project_dir), args.stack)
        except ValueError:
            config = {}  # no stack file yet: no rotation so far
        rotations = {repo: int(config.get(setting) or 0) for repo, setting in SETTING.items()}
        value = imported_value(fernet, credential, rotations)
        if os.path.lexists(args.out):
            raise KeyImportError(f"--out {args.out}: exists; give a new file (it will hold the keys, mode 0600)")
        write_secret_file(args.out, value)
    except (KeyImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for line in summary(value):
        print(line)
    print(f"{args.out}: the shared stack's {IMPORTED_KEYS_CONFIG} (mode 0600, it holds the keys); rotations "
          f"continue from fernetRotations {rotations['fernet_keys']} and credentialRotations "
          f"{rotations['credential_keys']}. Next:")
    print(f"  pulumi config set --secret {IMPORTED_KEYS_CONFIG} -s {args.stack} < {args.out} && shred -u {args.out}")
    print(f"  pulumi up -s {args.stack}, then pulumi up on every region stack (the nodes take the imported keys)")
    return 0


def _plan(args, new) -> int:
    if args.old_rev:
        path = Path(args.topology).resolve()
        top = subprocess.run(["git", "-C", str(path.parent), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        shown = subprocess.run(["git", "-C", top, "show", f"{args.old_rev}:{path.relative_to(top)}"],
                               capture_output=True, text=True)
        if shown.returncode != 0:
            raise ValueError(f"--from-git {args.old_rev}: {shown.stderr.strip()}")
        data = yaml.safe_load(shown.stdout)
        try:
            old = load_topology(data)
        except TopologyError as exc:
            raise ValueError(f"the topology at {args.old_rev} is not valid: {exc}") from None
    else:
        old = load_topology_file(args.old)
    steps = changes.plan(old, new)
    stack_of = {region: stack for stack, region in region_stacks(Path(args.project_dir)).items()}
    if not steps:
        print("no stack to change")
    for line in changes.describe(steps, stack_of):
        print(line)
    print(f"every step keeps an odd number of Galera votes and no region holding half of them; "
          f"stacks: {', '.join(stack_of.get(s.stack, s.stack) for s in steps)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
