"""The lab deployment: every node of a topology as a namespace, running the real daemons
with the files the renderer produced for it (the bytes cloud-init would write on a VM).

    dep = LabDeployment(Lab(), load_topology_file(LAB_TOPOLOGY))
    dep.up()          # render, build namespaces, enforce security groups, start daemons
    dep.checks()      # what works and what is refused, measured
    dep.lab.teardown()

Generic here: the network of every region, the security groups (nftables in each node,
from the same rules the Pulumi components create) and each node's rendered files at their
VM paths. Each layer's daemons (Galera, memcached, proxies, Keystone) start from
lab/layers/, in that order.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from keystone_multiregion import changes, pki, push, render
from keystone_multiregion.render import RenderedNode, render_node, write_rendered
from keystone_multiregion.roles.galera import GALERA_NODE_TOOL
from keystone_multiregion.secrets import SecretsError, require_secrets
from keystone_multiregion.security import PORTS
from keystone_multiregion.topology import Node, Topology

from . import Lab, argv_secrets, catalog, firewall, layers, monitoring, objectstore, packages, service
from .checks import Check
from .net import HostSpec
from .ssh import OPS_HOST, SSHD_PACKAGES, client_key, ops_address, ssh, start_sshd
from .util import LabError

LAB_TOPOLOGY = Path(__file__).resolve().parent / "topology.yaml"
GALERA_TOOL = ["python3", GALERA_NODE_TOOL]

# An HTTP GET from inside a lab namespace, bounded by a timeout; prints the status code.
# One HTTP GET from inside a lab namespace: prints {"status": N, "body": "..."} (an HTTP
# error status with its body too); nothing when nothing answered.
_HTTP_GET = r"""
import json, sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:
        print(json.dumps({"status": r.status, "body": r.read().decode(errors="replace")}))
except urllib.error.HTTPError as exc:
    print(json.dumps({"status": exc.code, "body": exc.read().decode(errors="replace")}))
except Exception:
    pass
"""

class LabDeployment:
    GALERA_TOOL = GALERA_TOOL

    def __init__(self, lab: Lab, topo: Topology, topology_path: str | Path = LAB_TOPOLOGY):
        self.lab = lab
        self.topo = topo
        self.topology_path = str(topology_path)  # the lab's systemctl stand-in loads it (lab/service.py)

    # -- paths and secrets ----------------------------------------------------------------
    @property
    def render_dir(self) -> Path:
        return Path(self.lab.labdir) / "render"

    @property
    def drill_keys_path(self) -> Path:
        """Where the Keystone drills record the key repositories they rotated the nodes to."""
        return Path(self.lab.labdir) / "drill-keys.json"

    def key_state(self, repo: str) -> tuple[list[str], int]:
        """The key sequence and rotation count the lab's Keystone nodes hold now for `repo`
        (fernet_keys, credential_keys): recorded by the drills that rotate (so another `drill`
        run on the same lab continues from there), else the lab's initial repository."""
        recorded = json.loads(self.drill_keys_path.read_text()).get(repo) if self.drill_keys_path.exists() else None
        if recorded:
            return list(recorded[0]), int(recorded[1])
        current = self.secrets()[repo]
        return [current[max(current, key=int)], current["0"]], 0

    def key_repositories(self) -> dict:
        """Both repositories as the nodes hold them now: what a new Keystone node gets (as the
        shared stack's repositories after its rotations reach a new region's stack)."""
        from keystone_multiregion.keys import CREDENTIAL_MAX_ACTIVE, repository
        return {"fernet_keys": repository(*self.key_state("fernet_keys"), self.topo.keystone.max_active_keys),
                "credential_keys": repository(*self.key_state("credential_keys"), CREDENTIAL_MAX_ACTIVE)}

    def secrets(self) -> dict:
        """The lab's own secrets and TLS credentials, generated once per lab directory (0600).
        The public endpoints' certificates come from a development CA of the lab's own, as in a
        stack whose config says allowDevelopmentCertificate: true (the lab runs no stack)."""
        path = Path(self.lab.labdir) / "secrets.yaml"
        if path.exists():
            values = yaml.safe_load(path.read_text()) or {}
            # Reuse them while they cover this topology (an older lab's file may not).
            values = self._with_backup_store(values)
            try:
                for n in self.topo.nodes():
                    require_secrets(n.role, values, node_name=n.name, region=n.region,
                                    backup_auth_version=self._backup_auth_version)
                self.save_secrets(values)
                return values
            except SecretsError:
                pass
        values = self._with_backup_store(pki.generate_secrets(self.topo))
        path.parent.mkdir(parents=True, exist_ok=True)
        self.save_secrets(values)
        return values

    @property
    def _backup_auth_version(self) -> str | None:
        return self.topo.backup.store.auth_version if self.topo.backup else None

    def _with_backup_store(self, values: dict) -> dict:
        """The lab's object store credentials as the shared stack's backupStore (the operator's
        config there); a backup key when an older lab's secrets have none."""
        if self.topo.backup is None:
            return values
        objectstore._secrets_of(self)  # made once per lab directory, before the store runs
        creds = objectstore.credentials(self)
        out = {**values, "backup_store": {"user": creds["user"], "key": creds["key"]}}
        if not out.get("backup_key"):
            import secrets as _random
            out["backup_key"] = _random.token_hex(32)
        return out

    def save_secrets(self, values: dict) -> None:
        """The lab's secrets after a change a stack would make (a renewed certificate)."""
        path = Path(self.lab.labdir) / "secrets.yaml"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(values, fh)

    def host_spec(self, node: Node) -> HostSpec:
        prefix = ipaddress.ip_network(self.topo.region(node.region).cidr).prefixlen
        return HostSpec(node.name, node.region, f"{node.address}/{prefix}")

    # -- up -------------------------------------------------------------------------------
    def install(self) -> None:
        """The Debian and PyPI packages the lab and this topology's layers need (only what is missing)."""
        packages.ensure_lab_base(self.lab.prefix)
        roles = {n.role for n in self.topo.nodes()}
        packages.ensure_packages(sorted({p for layer in layers.ORDER if set(layer.ROLES) & roles
                                         for p in layer.PACKAGES} | set(SSHD_PACKAGES)
                                        | (set(catalog.CLIENT_PACKAGES) if "keystone" in roles else set())
                                        | (set(monitoring.PACKAGES) if "galera" in roles else set())
                                        | (set(objectstore.PACKAGES) if "galera" in roles else set())))

    def up(self, install: bool = True, log=print, wan_latency_ms: float = 0,
           only: tuple[str, ...] | None = None) -> None:
        """Render, build, and start every layer (or only the layers of the roles in `only`)."""
        if self.lab.state.read()["hosts"]:
            raise LabError(f"a lab is already up in {self.lab.labdir}: tear it down first (python -m lab down)")
        t0 = time.monotonic()
        if install:
            self.install()
        # A new lab starts from empty data directories: a previous lab's grastate.dat would
        # (rightly) stop galera-node from starting a new cluster.
        for leftover in (Path(self.lab.labdir) / "hosts", self.render_dir):
            shutil.rmtree(leftover, ignore_errors=True)
        # The keys a previous lab's drills rotated to: this lab starts from the secrets' own.
        self.drill_keys_path.unlink(missing_ok=True)
        secrets = self.secrets()
        rendered = [render_node(self.topo, n.name, secrets) for n in self.topo.nodes()]
        for r in rendered:
            write_rendered(r, self.render_dir)
        log(f"rendered {len(rendered)} nodes into {self.render_dir}")

        # The nodes, and the ops host in admin_cidr: where Pulumi runs (the key push comes from there).
        self.lab.net.build([self.host_spec(n) for n in self.topo.nodes()]
                           + [HostSpec(OPS_HOST, "admin", str(ops_address(self.topo)))],
                           region_cidrs={**{r.name: r.cidr for r in self.topo.regions}, "admin": self.topo.admin_cidr})
        log(f"network: {len(self.topo.regions)} regions, {len(rendered)} namespaces")
        if self.topo.backup is not None and (only is None or "galera" in only):
            objectstore.start(self, log)  # where the Galera nodes put their backups
        if wan_latency_ms:
            mode = self.set_wan_latency(wan_latency_ms)
            log(f"WAN latency: {wan_latency_ms} ms each way between regions ({mode})")
        for r in rendered:
            self._install_node(r)
        self.started = [layer for layer in layers.ORDER if only is None or set(layer.ROLES) & set(only)]
        with self.lab.state.update() as d:
            d["probes"]["layers"] = [layer.__name__.rsplit(".", 1)[-1] for layer in self.started]
        # Every process the lab starts is watched for a secret in its command line.
        with argv_secrets.Watch(argv_secrets.lab_secrets(self)) as watch:
            # sshd on every node with the host key its cloud-init installs: the stack pushes
            # every node's files over SSH from the admin network (node-agent), as the lab does.
            client_key(self)
            for node in self.topo.nodes():
                if only is None or node.role in only:
                    start_sshd(self, node.name)
            phases, t = {}, t0

            def phase(name: str) -> None:
                nonlocal t
                phases[name] = round(time.monotonic() - t, 1)
                t = time.monotonic()
            phase("network and nodes")
            for layer in self.started:
                layer.start(self, [n for n in self.topo.nodes() if n.role in layer.ROLES], log)
                phase(layer.__name__.rsplit(".", 1)[-1])
            # As the stack does once a node exists: its files pushed (no change on a new node),
            # one node of a role after the other, each push ending once the node is healthy.
            self.push_all(log, only)
            phase("push")
            # As each region stack does once its pushes are done: its catalog entries.
            if (only is None or {"keystone", "proxy"} <= set(only)) and catalog.serving_regions(self.topo):
                self.register_catalog(log)
                phase("catalog")
            if only is None and self.topo.nodes(role="galera"):
                monitoring.start(self, log)  # the exporters, and Prometheus on the ops host
                phase("monitoring")
        self.up_phases = phases  # seconds of each part of the cold start, in order
        with self.lab.state.update() as d:
            d["probes"]["argv_secrets"] = {"findings": watch.findings, "samples": watch.samples}
        self.up_seconds = time.monotonic() - t0  # the bench's cold start (packages present)
        log(f"up in {self.up_seconds:.1f}s")

    def register_catalog(self, log=print, regions: list[str] | None = None) -> None:
        t = time.monotonic()
        for step in catalog.register(self, regions):
            log(f"catalog {step['region']}: region and endpoints "
                + ", ".join(f"{i} {what}" for i, what in step["endpoints"].items())
                + (", identity service created" if step.get("service") else ""))
        log(f"catalog registered in {time.monotonic() - t:.1f}s; `./run lab openstack catalog list`")

    def push_all(self, log=print, only: tuple[str, ...] | None = None, nodes: list[str] | None = None) -> None:
        """Every node's files pushed (or the nodes of the roles in `only`, or the named ones),
        one after the other, each push ending once its node is healthy."""
        for node in self.topo.nodes():
            if (only is not None and node.role not in only) or (nodes is not None and node.name not in nodes):
                continue
            t = time.monotonic()
            out = self.push_files(node.name)
            if out.returncode != 0:
                raise LabError(f"the push to {node.name} failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
            report = json.loads(out.stdout.strip().splitlines()[-1])
            log(f"{node.name}: files pushed over SSH, {len(report['digests'])} as rendered, changed "
                f"{len(report['changed'])}, healthy ({time.monotonic() - t:.1f}s)")

    # -- a change of topology on the running lab ----------------------------------------------
    def change_topology(self, new: Topology, path: str | Path, log=print) -> list[dict]:
        """Take the running lab to another topology (regions added or removed) in the order a
        deployment takes (keystone_multiregion/changes.py, checked step by step first): regions
        leaving first, their Galera members leaving the cluster with the command the stack runs
        when it deletes them; then every staying region's nodes get their new files by push (and
        their security groups the new rules), one node after the other; then the regions joining
        are created, started, and pushed to. Returns what each step did and how long it took."""
        steps = changes.plan(self.topo, new)  # refuses an unsafe order before anything changes
        old = self.topo
        secrets = pki.extend_secrets(new, self.secrets())
        self.save_secrets(secrets)
        done = []
        old_names = {r.name for r in old.regions}
        for step in steps:
            t = time.monotonic()
            if step.operation == "pulumi destroy":
                self._remove_region(step.stack, log)
            else:
                if self.topo is old:
                    self._switch_topology(new, path)
                if step.stack in old_names:
                    for node in self.topo.nodes(step.stack):  # the region's security groups
                        firewall.apply(self.lab.net, self.topo, node)
                    self.push_all(log, nodes=[n.name for n in self.topo.nodes(step.stack)])
                else:
                    self._add_region(step.stack, secrets, log)
            done.append({"step": f"{step.operation} {step.stack}", "members": list(step.members),
                         "votes": step.votes, "s": round(time.monotonic() - t, 1)})
            log(f"{step.operation} {step.stack}: done in {done[-1]['s']}s"
                + (f" (Galera votes after each member: {step.votes})" if step.members else ""))
        if self.topo is old:
            self._switch_topology(new, path)
        for region in old_names - {r.name for r in new.regions}:
            self.lab.net.remove_region(region)
        if catalog.USER_HOST in self.lab.net.hosts():
            catalog.add_user_host(self)  # the user's hosts file and clouds.yaml name the regions of now
        monitoring.reconfigure(self, log)  # Prometheus scrapes the regions of now
        return done

    def _switch_topology(self, new: Topology, path: str | Path) -> None:
        self.topo = new
        self.topology_path = str(path)
        with self.lab.state.update() as d:
            d["probes"]["topology_path"] = self.topology_path
        for name in self.lab.net.hosts():
            if name not in (OPS_HOST, catalog.USER_HOST):
                service.shim(self, name)  # the lab's systemctl loads this topology now

    def _add_region(self, region: str, secrets: dict, log) -> None:
        r = self.topo.region(region)
        self.lab.net.add_region(region, r.cidr)
        nodes = self.topo.nodes(region)
        rendered = [render_node(self.topo, n.name, secrets) for n in nodes]
        for rn in rendered:
            write_rendered(rn, self.render_dir)
            self.lab.net.add_host(self.host_spec(rn.node))
        for rn in rendered:
            self._install_node(rn)
        for node in nodes:
            start_sshd(self, node.name)
        for layer in layers.ORDER:
            mine = [n for n in nodes if n.role in layer.ROLES]
            if mine and any(self.running(role) for role in layer.ROLES):
                layer.start(self, mine, log)
        self.push_all(log, nodes=[n.name for n in nodes])
        if region in catalog.serving_regions(self.topo):
            self.register_catalog(log, [region])

    def _remove_region(self, region: str, log) -> None:
        """`pulumi destroy` of a region's stack: its catalog entries go first (they depend on
        its nodes), then its Galera members leave the cluster (the stack's leave-<node> command,
        over SSH), the last one first; then its VMs go."""
        nodes = self.topo.nodes(region)
        if region in catalog.serving_regions(self.topo):
            for step in catalog.unregister(self, [region]):
                log(f"catalog {step['region']}: {step['endpoints_deleted']} endpoints and the region deleted")
        for node in sorted((n for n in nodes if n.role in push.LEAVE_ROLES), key=lambda n: -n.number):
            out = ssh(self, node.name, push.leave_command(), timeout=600)
            if out.returncode != 0:
                raise LabError(f"{node.name} did not leave the cluster (exit {out.returncode}): "
                               f"{out.stderr.strip()[-300:]}")
            log(f"{node.name}: {out.stdout.strip().splitlines()[-1]}")
        for node in nodes:
            self.lab.procs.stop_all(node.name)
            self.lab.net.remove_host(node.name)

    def drift_checks(self) -> list[Check]:
        """Each node's own drift check (node-agent check, as its timer runs it)."""
        out = []
        for node in self.topo.nodes():
            if not self.lab.procs.is_alive(node.name, "sshd"):
                continue
            cp = self.lab.procs.run(node.name, ["python3", push.NODE_AGENT, "check"], check=False, timeout=30)
            out.append(Check(f"{node.name} files as pushed", cp.returncode == 0,
                             (cp.stdout.strip() or cp.stderr.strip())[-200:]))
        return out

    def restart_service(self, name: str, unit: str) -> None:
        """What `systemctl restart UNIT` does on a VM, for the lab's process (lab/service.py)."""
        node = self.topo.node(name)
        if unit == "memcached":
            self.lab.procs.stop(name, "memcached", timeout=10)
            layers.memcached.start(self, [node], log=lambda *_: None)
        elif unit in ("replica-health", "replica-watch") and node.role == "replica":
            layers.replica.restart_unit(self, name, unit)
        elif unit == "mariadb" and node.role == "replica":
            self.lab.procs.stop(name, "mariadb", timeout=120)
            layers.replica.start_replica(self, name)
        elif unit == "mariadb":
            self.lab.procs.stop(name, "mariadb", timeout=120)  # SIGTERM: a clean shutdown, then IST
            self.start_galera(name)
        elif unit == "garb":
            self.lab.procs.stop(name, "garbd", timeout=30)
            layers.galera.start_arbitrator(self, name)
        elif unit == "prometheus-mysqld-exporter":
            self.lab.procs.stop(name, monitoring.EXPORTER, timeout=10)
            monitoring.start_exporter(self, name)
        elif unit == "prometheus-node-exporter":
            self.lab.procs.stop(name, monitoring.NODE_EXPORTER, timeout=10)
            monitoring.start_node_exporter(self, name)
        else:
            raise LabError(f"the lab cannot restart {unit}")

    def push_files(self, name: str, data: dict | None = None, source: str = OPS_HOST):
        """The stack's push of one node's files (components/push.py): node-agent apply over SSH
        from the admin network with the host key pinned, the payload (push.payload of the node's
        rendered files unless given) on stdin. Returns the CompletedProcess."""
        if data is None:
            data = push.payload(self.topo, render_node(self.topo, name, self.secrets()))
        return ssh(self, name, push.apply_command(), input=push.encode(data), source=source, timeout=1900)

    def running(self, role: str) -> bool:
        """Whether the layer of `role` was started in this lab."""
        started = self.lab.state.read()["probes"].get("layers")
        return started is None or any(role in getattr(layers, name).ROLES for name in started)

    def is_bootstrap(self, node: Node) -> bool:
        return node.role == "galera" and node.region == self.topo.bootstrap_region and node.number == 1

    # -- WAN -------------------------------------------------------------------------------
    def set_wan_latency(self, ms: float, roles: tuple[str, ...] | None = None) -> str:
        """Delay every packet between regions by `ms` each way (RTT 2*ms); traffic inside a
        region stays fast. 0 clears it. Returns the mechanism (netem or the NFQUEUE delayer)."""
        mode = "cleared"
        for node in self.topo.nodes():
            if roles is not None and node.role not in roles:
                continue
            if ms <= 0:
                self.lab.net.clear_latency(node.name)
                continue
            others = [r.cidr for r in self.topo.regions if r.name != node.region]
            mode = self.lab.net.set_latency(node.name, ms, peers=others)
        return mode

    # -- galera ---------------------------------------------------------------------------
    def galera_status(self, name: str) -> dict:
        """The node's wsrep status (galera-node status), {} when it does not answer."""
        import json
        out = self.lab.procs.run(name, GALERA_TOOL + ["status"], check=False, timeout=15)
        try:
            return json.loads(out.stdout)
        except ValueError:
            return {}

    def start_galera(self, name: str, timeout: float = 180) -> None:
        """galera-node start --exec: the node's own safe-bootstrap decision, then mariadbd."""
        self.lab.procs.start(name, "mariadb", GALERA_TOOL + ["start", "--exec"],
                             ready=lambda: self.galera_status(name).get("healthy"), ready_timeout=timeout)
        if self.is_bootstrap(self.topo.node(name)) and not getattr(self, "_initialised", False):
            self.lab.procs.run(name, GALERA_TOOL + ["init-cluster"], timeout=60)
            self._initialised = True
        if not self.lab.procs.is_alive(name, "health"):
            self.lab.procs.start(name, "health", GALERA_TOOL + ["health-server", "--address",
                                                               self.topo.node(name).address,
                                                               "--port", str(PORTS["galera_health"])])

    def sql(self, name: str, statement: str, timeout: float = 30, check: bool = True):
        """Run SQL on a node as root over its socket; returns the CompletedProcess."""
        # The statement on stdin: it may carry a password (CREATE USER), and argv is public.
        return self.lab.procs.run(name, ["mariadb", "--protocol=socket", "-S", "/run/mysqld/mysqld.sock", "-u",
                                         "root", "-N", "-B"], input=statement, timeout=timeout, check=check)

    def _install_node(self, r: RenderedNode) -> None:
        node = r.node
        node_dir = self.render_dir / node.region / node.name / "files"
        # Each rendered file appears at its VM path, for this node's processes only; and the
        # lab's stand-in for systemctl, which node-agent calls for reloads and restarts.
        _, manager = service.shim(self, node.name)
        # A file the stack only pushes (never in user_data) starts empty: the first push fills it.
        push_only = Path(self.lab.labdir) / "push-only" / node.name
        binds = {}
        for f in r.files:
            binds[f.path] = str(node_dir / f.path.lstrip("/"))
            if f.push_only:
                placeholder = push_only / f.path.lstrip("/")
                placeholder.parent.mkdir(parents=True, exist_ok=True)
                render._write(placeholder, "", int(f.permissions, 8))
                binds[f.path] = str(placeholder)
        self.lab.procs.set_binds(node.name, {**binds, service.VM_PATH: manager})
        # Each node's own state directory (node-agent records what it applied there).
        self.lab.procs.make_root(node.name, [push.STATE_DIR])
        firewall.apply(self.lab.net, self.topo, node)
        for layer in layers.ORDER:
            if node.role in layer.ROLES:
                layer.install(self, r)

    # -- probes ---------------------------------------------------------------------------
    def memcached_stats(self, client: str, server: str, timeout: float = 2.0) -> dict[str, str] | None:
        return layers.memcached.stats(self, client, server, timeout)

    def http_get(self, client: str, url: str, timeout: float = 2.0) -> tuple[int, str] | None:
        """(status, body) of a GET of `url` from inside `client`'s namespace, or None if
        nothing answered."""
        out = self.lab.net.exec(client, [sys.executable, "-c", _HTTP_GET, url, str(timeout)],
                                timeout=timeout + 5, check=False)
        try:
            got = json.loads(out.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            return None
        return got["status"], got["body"]

    def http_status(self, client: str, url: str, timeout: float = 2.0) -> int | None:
        """The HTTP status `client` gets for `url`, or None if nothing answered."""
        got = self.http_get(client, url, timeout)
        return got[0] if got else None

    def status(self) -> list[str]:
        lines = []
        hosts = self.lab.net.hosts()
        for node in self.topo.nodes():
            h = hosts.get(node.name)
            if h is None:
                lines.append(f"{node.name:22} (not built)")
                continue
            procs = self.lab.procs.processes(node.name)
            running = ", ".join(f"{rec['name']} {'up' if self.lab.procs.is_alive(node.name, rec['name']) else 'DOWN'}"
                                for rec in procs.values()) or "-"
            link = "link up" if self.lab.net.is_link_up(node.name) else "LINK DOWN"
            lines.append(f"{node.name:22} {node.region:6} {h['address']:16} ns {h['netns']:16} {link:9} {running}")
        return lines

    def live_state(self) -> dict:
        """What the running lab says, for keystone_multiregion.picture: who holds each VIP,
        each Galera member's state, the node each region's database frontend sends new
        sessions to (read from the stats socket of the proxy holding the internal VIP), and
        the nodes whose processes are down."""
        from .layers import proxy as proxy_layer
        holders = proxy_layer.vip_holders(self)
        galera = {}
        for node in self.topo.nodes(role="galera"):
            st = self.galera_status(node.name)
            if st.get("wsrep_local_state_comment"):
                galera[node.name] = {"state": st["wsrep_local_state_comment"],
                                     "primary": st.get("wsrep_cluster_status") == "Primary",
                                     "size": int(st.get("wsrep_cluster_size") or 0)}
        writers = {}
        for region in self.topo.regions:
            internal = self.topo.vips(region.name, "internal")
            held = holders.get(internal[0].address) if internal else None
            states = proxy_layer.server_states(self, held[0]) if held else None
            if states:
                writers[region.name] = proxy_layer.active_server(states, "galera")
        main = {"galera": "mariadb", "keystone": "keystone", "memcached": "memcached", "proxy": "haproxy",
                "arbitrator": "garbd", "replica": "mariadb"}
        down = [n.name for n in self.topo.nodes() if not self.lab.procs.is_alive(n.name, main[n.role])]
        return {"vip_holders": holders, "galera": galera, "writers": writers, "down": down}

    def checks(self) -> list[Check]:
        """Measured facts of the running lab, each a check that can fail."""
        out: list[Check] = []
        regions = [r.name for r in self.topo.regions]
        first = {r: self.topo.nodes(r)[0].name for r in regions}  # any node: the link is the region's
        for i, a in enumerate(regions):
            for b in regions[i + 1:]:
                p = self.lab.net.ping(first[a], first[b], count=2, interval=0.2, timeout=3)
                out.append(Check(f"{a} reaches {b}", p.ok, f"{p.received}/{p.sent} replies, avg {p.avg_ms} ms"))
        for layer in layers.ORDER:
            if any(self.running(role) for role in layer.ROLES):
                out += layer.checks(self)
        out += self.drift_checks()
        out.append(self.argv_secrets_check())
        return out

    def argv_secrets_check(self) -> Check:
        """No process's command line carried a lab secret: sampled while `up` started every
        layer, and scanned once more now."""
        seen = self.lab.state.read()["probes"].get("argv_secrets") or {"findings": [], "samples": 0}
        now = argv_secrets.scan(argv_secrets.lab_secrets(self))
        findings = seen["findings"] + [f for f in now if f not in seen["findings"]]
        return Check("no secret in any command line", not findings,
                     "; ".join(findings[:5]) or f"{seen['samples']} samples during up and one now: none")
