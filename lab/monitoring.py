"""Prometheus in the lab: the exporters a deployment runs, a real Prometheus that scrapes
them, and drills O1/O2 that see its alerts fire and clear.

Every Galera node and every replica runs Debian's prometheus-mysqld-exporter from its
rendered /etc/default/prometheus-mysqld-exporter (the same file cloud-init writes), as the
system user `prometheus`; every proxy's HAProxy serves its own exporter (the rendered haproxy.cfg); every
node runs Debian's prometheus-node-exporter from its rendered defaults file, and its metrics
timer (the rendered keystone-multiregion-metrics.timer/.service: `node-agent metrics` every
OnUnitActiveSec, which node_exporter's textfile collector serves).
Prometheus (Debian's package) runs on the `ops` host, in admin_cidr, which is the lab's
monitoring.cidr, with prometheus.yml and the alert rules from
keystone_multiregion/monitoring.py. The security groups (nftables in every node) admit the
scrapes from there only.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import yaml

from keystone_multiregion.monitoring import (JOBS, MYSQLD_EXPORTER_ROLES, RULES_FILE, alert_rules,
                                             prometheus_config, scrape_targets)
from keystone_multiregion.roles.node import METRICS_DIR, METRICS_SERVICE, METRICS_TIMER, NODE_EXPORTER_DEFAULTS
from keystone_multiregion.security import PORTS

from . import service
from .layers.proxy import wait
from .ssh import OPS_HOST, ops_address
from .util import LabError

PACKAGES = ("prometheus", "prometheus-mysqld-exporter", "prometheus-node-exporter")
PROMETHEUS_PORT = 9090
EXPORTER = "mysqld-exporter"
# The unit's EnvironmentFile, then the unit's User= and ExecStart.
_EXPORTER_CMD = (". /etc/default/prometheus-mysqld-exporter && export DATA_SOURCE_NAME && "
                 "exec setpriv --reuid=prometheus --regid=prometheus --init-groups "
                 "/usr/bin/prometheus-mysqld-exporter $ARGS")
# Every node: node_exporter as Debian's unit runs it, and the metrics timer's service.
NODE_EXPORTER = "node-exporter"
_NODE_EXPORTER_CMD = (f". {NODE_EXPORTER_DEFAULTS} && exec setpriv --reuid=prometheus --regid=prometheus "
                      "--init-groups /usr/bin/prometheus-node-exporter $ARGS")
METRICS_TIMER_PROC = "metrics-timer"
# What systemd does with keystone-multiregion-metrics.timer: the service's ExecStart every
# OnUnitActiveSec. Bounded in runs (the lab's timers stop by themselves after TIMER_HOURS).
TIMER_HOURS = 6
_TIMER_LOOP = r"""
import json, subprocess, sys, time
interval, runs, argvs = float(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
for _ in range(runs):
    for argv in argvs:
        subprocess.run(argv, timeout=60)
    time.sleep(interval)
"""
WAIT_LIMIT_S = 180  # every wait for an alert is bounded (a safety bound, not a target)


def _dir(dep) -> Path:
    return Path(dep.lab.labdir) / "monitoring"


def prometheus_url(dep) -> str:
    return f"http://{ops_address(dep.topo).ip}:{PROMETHEUS_PORT}"


def _get(dep, host: str, url: str, timeout: float = 5) -> str | None:
    """GET from inside a lab namespace; the body of a 200, or None."""
    got = dep.http_get(host, url, timeout)
    return got[1] if got and got[0] == 200 else None


def start_exporter(dep, name: str) -> None:
    node = dep.topo.node(name)
    url = f"http://{node.address}:{PORTS['mysqld_exporter']}/metrics"
    dep.lab.procs.start(name, EXPORTER, ["sh", "-c", _EXPORTER_CMD],
                        ready=lambda: "mysql_up" in (_get(dep, OPS_HOST, url, timeout=2) or ""), ready_timeout=60)


def _node_exporter_answers(dep, name: str) -> bool:
    url = f"http://{dep.topo.node(name).address}:{PORTS['node_exporter']}/metrics"
    return "node_" in (_get(dep, OPS_HOST, url, timeout=2) or "")


def start_node_exporter(dep, name: str, wait_ready: bool = True) -> None:
    dep.lab.procs.make_root(name, [METRICS_DIR])
    os.chmod(dep.lab.procs.host_path(name, METRICS_DIR), 0o755)
    dep.lab.procs.start(name, NODE_EXPORTER, ["sh", "-c", _NODE_EXPORTER_CMD],
                        ready=(lambda: _node_exporter_answers(dep, name)) if wait_ready else None, ready_timeout=60)


def start_metrics_timer(dep, name: str) -> None:
    """The node's metrics timer as systemd runs it, from its rendered unit files."""
    procs = dep.lab.procs
    interval = float(service.unit_values(procs.host_path(name, METRICS_TIMER), "OnUnitActiveSec")[0].rstrip("s"))
    argvs = service.exec_lines(procs.host_path(name, METRICS_SERVICE), "ExecStart")
    runs = int(TIMER_HOURS * 3600 / interval)
    procs.start(name, METRICS_TIMER_PROC, [sys.executable, "-c", _TIMER_LOOP, str(interval), str(runs),
                                           json.dumps(argvs)])


def _configure(dep) -> Path:
    """Exporters on every node of the topology (mysqld_exporter on the Galera nodes and the
    replicas, node_exporter and the metrics timer everywhere), and Prometheus's configuration
    and rules for it written; returns their directory."""
    for node in (n for n in dep.topo.nodes() if n.role in MYSQLD_EXPORTER_ROLES):
        if not dep.lab.procs.is_alive(node.name, EXPORTER):
            start_exporter(dep, node.name)
    started = []
    for node in dep.topo.nodes():  # all at once, then waited for together
        if not dep.lab.procs.is_alive(node.name, NODE_EXPORTER):
            start_node_exporter(dep, node.name, wait_ready=False)
            started.append(node.name)
        if not dep.lab.procs.is_alive(node.name, METRICS_TIMER_PROC):
            start_metrics_timer(dep, node.name)
    pending = set(started)

    def answered() -> bool:
        pending.difference_update([n for n in sorted(pending) if _node_exporter_answers(dep, n)])
        return not pending
    if not wait(answered, 60, interval=0.2):
        raise LabError(f"node_exporter does not answer on {sorted(pending)}")
    d = _dir(dep)
    d.mkdir(parents=True, exist_ok=True)
    (d / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(dep.topo, str(d)), sort_keys=False))
    (d / RULES_FILE).write_text(yaml.safe_dump(alert_rules(dep.topo), sort_keys=False))
    return d


def start(dep, log=print) -> None:
    t = time.monotonic()
    d = _configure(dep)
    if not dep.lab.procs.is_alive(OPS_HOST, "prometheus"):
        dep.lab.procs.start(OPS_HOST, "prometheus", [
            "prometheus", f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
            f"--web.listen-address={ops_address(dep.topo).ip}:{PROMETHEUS_PORT}", "--storage.tsdb.retention.time=1d"],
            ready=lambda: _get(dep, OPS_HOST, prometheus_url(dep) + "/-/ready", timeout=2) is not None,
            ready_timeout=60)
    up = wait(lambda: _all_up(dep), 60, interval=0.5)
    log(f"monitoring: Prometheus on {prometheus_url(dep)} scrapes {len(targets(dep))} exporters, "
        f"{'all up' if up else 'NOT all up: ' + str(targets(dep))} ({time.monotonic() - t:.1f}s)")


def reconfigure(dep, log=print) -> None:
    """After a change of topology: exporters on new Galera nodes and replicas, the configuration and
    rules rewritten, and Prometheus told to read them (SIGHUP, as `systemctl reload`)."""
    import signal
    if not dep.lab.procs.is_alive(OPS_HOST, "prometheus"):
        return
    _configure(dep)
    dep.lab.procs.kill(OPS_HOST, "prometheus", signal.SIGHUP)
    up = wait(lambda: _all_up(dep), 60, interval=0.5)
    log(f"monitoring: Prometheus reloaded, {len(targets(dep))} exporters, {'all up' if up else 'NOT all up'}")


def api(dep, path: str) -> dict | None:
    text = _get(dep, OPS_HOST, prometheus_url(dep) + path)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def targets(dep) -> dict[str, str]:
    """{scrape URL: health} of every active target."""
    out = api(dep, "/api/v1/targets") or {}
    return {t["scrapeUrl"]: t["health"] for t in (out.get("data") or {}).get("activeTargets", [])}


def _all_up(dep) -> bool:
    seen = targets(dep)
    return len(seen) == sum(len(scrape_targets(dep.topo, job)) for job in JOBS) and set(seen.values()) == {"up"}


def alerts(dep) -> list[dict]:
    out = api(dep, "/api/v1/alerts") or {}
    return (out.get("data") or {}).get("alerts", [])


def _result(*args):
    from .drills import DrillResult  # lab.drills imports lab.deployment, which imports this module
    return DrillResult(*args)


class MonitoringDrills:
    """O1: a region cut off from the others fires GaleraNotPrimary for its member (and only
    its member), which clears after the heal. O2: a region's Keystone nodes stopped fire
    KeystoneOnBackups for that region, cleared once they are back. O3 and O4 (below) see the
    nodes' own metrics alert: a VIP held by nobody, memcached down. O5 (a replica region
    only, not in run_all): a replica's stopped IO thread. Outcomes asserted, durations
    reported."""

    def __init__(self, dep):
        self.dep = dep
        self.topo = dep.topo
        serving = [r.name for r in self.topo.regions if self.topo.vips(r.name)]
        self.cut, self.stopped = serving[-1], serving[1]

    def _watch(self, name: str, seen: dict, state: str = "firing"):
        """The alerts called `name` in `state` now, keyed by node (or region); every alert of
        that name seen pending or firing is added to `seen`."""
        now = {}
        for a in alerts(self.dep):
            if a["labels"].get("alertname") != name:
                continue
            key = a["labels"].get("node") or a["labels"].get("region")
            seen.setdefault(key, set()).add(a["state"])
            if a["state"] == state:
                now[key] = a["labels"]
        return now

    def _fire_and_clear(self, title, alert, expect_key, fault, repair, extra=None):
        problems, measured, seen = [], {}, {}
        if self._watch(alert, {}, "firing") or self._watch(alert, {}, "pending"):
            return _result(title, False, {}, [f"{alert} is active before the fault: {alerts(self.dep)}"])
        t = time.monotonic()
        fault()
        try:
            fired = wait(lambda: expect_key in self._watch(alert, seen), WAIT_LIMIT_S, interval=0.5)
            measured["fired_after_s"] = round(time.monotonic() - t, 1) if fired else None
            if not fired:
                problems.append(f"{alert} did not fire for {expect_key} within {WAIT_LIMIT_S}s (bound)")
        finally:
            t = time.monotonic()
            repair()
        cleared = wait(lambda: not self._watch(alert, seen, "firing") and not self._watch(alert, seen, "pending"),
                       WAIT_LIMIT_S, interval=0.5)
        measured["cleared_after_repair_s"] = round(time.monotonic() - t, 1) if cleared else None
        if not cleared:
            problems.append(f"{alert} still active {WAIT_LIMIT_S}s after the repair: {self._watch(alert, {})}")
        others = sorted(k for k in seen if k != expect_key)
        measured["alerted_for"] = sorted(seen)
        if others:
            problems.append(f"{alert} also went pending/firing for {others}")
        if extra:
            extra(problems, measured)
        return _result(title, not problems, measured, problems)

    def drill_not_primary(self):
        region = self.cut
        member = self.topo.nodes(region, "galera")[0].name
        hosts = [n.name for n in self.topo.nodes(region)]
        others = [r.cidr for r in self.topo.regions if r.name != region]  # the WAN; monitoring still reaches it
        net = self.dep.lab.net

        def rejoined(problems, measured):
            ok = wait(lambda: self.dep.galera_status(member).get("healthy"), WAIT_LIMIT_S, interval=0.5)
            if not ok:
                problems.append(f"{member} did not come back Synced/Primary after the heal")
        return self._fire_and_clear(f"O1. {region} cut off from the other regions: GaleraNotPrimary for {member}",
                                    "GaleraNotPrimary", member, lambda: net.partition(hosts, peers=others),
                                    lambda: net.heal(hosts), rejoined)

    def drill_keystone_backends(self):
        from .layers import keystone as keystone_layer
        region = self.stopped
        nodes = [n.name for n in self.topo.nodes(region, "keystone")]

        def stop():
            for name in nodes:
                self.dep.lab.procs.stop(name, "keystone", timeout=10)

        def start():
            for name in nodes:
                if not self.dep.lab.procs.is_alive(name, "keystone"):
                    keystone_layer.start_api(self.dep, name)
        return self._fire_and_clear(f"O2. every Keystone node of {region} stopped: KeystoneOnBackups for {region}",
                                    "KeystoneOnBackups", region, stop, start)

    def drill_vip_held_by_none(self):
        """O3: keepalived stopped on both proxies of a region: its VIPs are held by nobody
        (each proxy's node-agent metrics say so), VipHeldByNone fires for the region, and clears
        once keepalived runs again and the VIPs are back on their masters."""
        from .layers import proxy as proxy_layer
        region = self.cut
        proxies = [n.name for n in self.topo.nodes(region, "proxy")]

        def stop():
            for name in proxies:
                self.dep.lab.procs.stop(name, "keepalived", timeout=10)

        def start():
            for name in proxies:
                if not self.dep.lab.procs.is_alive(name, "keepalived"):
                    proxy_layer.start_keepalived(self.dep, name)

        def settled(problems, measured):
            if not proxy_layer.wait(lambda: proxy_layer.vips_settled(self.dep, region), WAIT_LIMIT_S, 0.2):
                problems.append(f"the VIPs of {region} are not back on their masters: "
                                f"{proxy_layer.vip_holders(self.dep, region)}")
        return self._fire_and_clear(f"O3. keepalived stopped on both proxies of {region}: VipHeldByNone for {region}",
                                    "VipHeldByNone", region, stop, start, settled)

    def drill_memcached_down(self):
        """O4: a region's memcached stopped: MemcachedDown fires for that node (its node-agent
        metrics), and clears once memcached runs again."""
        from .layers import memcached as memcached_layer
        node = self.topo.nodes(self.stopped, "memcached")[0]
        return self._fire_and_clear(
            f"O4. memcached stopped on {node.name}: MemcachedDown for {node.name}", "MemcachedDown", node.name,
            lambda: self.dep.lab.procs.stop(node.name, "memcached", timeout=10),
            lambda: memcached_layer.start(self.dep, [node], log=lambda *_: None))

    def drill_replica_not_replicating(self):
        """O5 (a topology with a replica region): a replica's IO thread stopped (STOP SLAVE
        IO_THREAD, its source still up): ReplicaNotReplicating fires for that replica only, and
        clears once it replicates again (START SLAVE IO_THREAD; replica-node status healthy)."""
        from .layers import replica as replica_layer
        node = self.topo.nodes(role="replica")[0]

        def replicating(problems, measured):
            if not wait(lambda: replica_layer.status(self.dep, node.name).get("healthy"), WAIT_LIMIT_S, interval=0.5):
                problems.append(f"{node.name} does not replicate again: {replica_layer.status(self.dep, node.name)}")
        return self._fire_and_clear(
            f"O5. replication's IO thread stopped on {node.name}: ReplicaNotReplicating for {node.name}",
            "ReplicaNotReplicating", node.name, lambda: self.dep.sql(node.name, "STOP SLAVE IO_THREAD"),
            lambda: self.dep.sql(node.name, "START SLAVE IO_THREAD"), replicating)

    def run_all(self, log=print) -> list:
        results = []
        for drill in (self.drill_not_primary, self.drill_keystone_backends, self.drill_vip_held_by_none,
                      self.drill_memcached_down):
            result = drill()
            log(result.line())
            results.append(result)
        return results


def require_running(dep) -> None:
    if not dep.lab.procs.is_alive(OPS_HOST, "prometheus"):
        raise LabError("the lab's Prometheus does not run (a lab started before it existed): "
                       "`./run lab down` and `./run lab up`")
