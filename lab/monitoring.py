"""Prometheus in the lab: the exporters a deployment runs, a real Prometheus that scrapes
them, and drills O1/O2 that see its alerts fire and clear.

Every Galera node runs Debian's prometheus-mysqld-exporter from its rendered
/etc/default/prometheus-mysqld-exporter (the same file cloud-init writes), as the system user
`prometheus`; every proxy's HAProxy serves its own exporter (the rendered haproxy.cfg).
Prometheus (Debian's package) runs on the `ops` host, in admin_cidr, which is the lab's
monitoring.cidr, with prometheus.yml and the alert rules from
keystone_multiregion/monitoring.py. The security groups (nftables in every node) admit the
scrapes from there only.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from keystone_multiregion.monitoring import RULES_FILE, alert_rules, prometheus_config
from keystone_multiregion.security import PORTS

from .layers.proxy import wait
from .ssh import OPS_HOST, ops_address
from .util import LabError

PACKAGES = ("prometheus", "prometheus-mysqld-exporter")
PROMETHEUS_PORT = 9090
EXPORTER = "mysqld-exporter"
# The unit's EnvironmentFile, then the unit's User= and ExecStart.
_EXPORTER_CMD = (". /etc/default/prometheus-mysqld-exporter && export DATA_SOURCE_NAME && "
                 "exec setpriv --reuid=prometheus --regid=prometheus --init-groups "
                 "/usr/bin/prometheus-mysqld-exporter $ARGS")
WAIT_LIMIT_S = 180  # every wait for an alert is bounded (a safety bound, not a target)


def _dir(dep) -> Path:
    return Path(dep.lab.labdir) / "monitoring"


def prometheus_url(dep) -> str:
    return f"http://{ops_address(dep.topo).ip}:{PROMETHEUS_PORT}"


def _get(dep, host: str, url: str, timeout: float = 5) -> str | None:
    """GET from inside a lab namespace; the body, or None."""
    script = ("import sys, urllib.request\n"
              "try:\n"
              f"    sys.stdout.write(urllib.request.urlopen({url!r}, timeout={timeout}).read().decode())\n"
              "except Exception as exc:\n"
              "    sys.exit(1)\n")
    out = dep.lab.net.exec(host, ["python3", "-c", script], check=False, timeout=timeout + 5)
    return out.stdout if out.returncode == 0 else None


def start_exporter(dep, name: str) -> None:
    node = dep.topo.node(name)
    url = f"http://{node.address}:{PORTS['mysqld_exporter']}/metrics"
    dep.lab.procs.start(name, EXPORTER, ["sh", "-c", _EXPORTER_CMD],
                        ready=lambda: "mysql_up" in (_get(dep, OPS_HOST, url, timeout=2) or ""), ready_timeout=60)


def start(dep, log=print) -> None:
    t = time.monotonic()
    for node in dep.topo.nodes(role="galera"):
        if not dep.lab.procs.is_alive(node.name, EXPORTER):
            start_exporter(dep, node.name)
    d = _dir(dep)
    d.mkdir(parents=True, exist_ok=True)
    (d / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(dep.topo, str(d)), sort_keys=False))
    (d / RULES_FILE).write_text(yaml.safe_dump(alert_rules(dep.topo), sort_keys=False))
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
    """After a change of topology: exporters on new Galera nodes, the configuration and
    rules rewritten, and Prometheus told to read them (SIGHUP, as `systemctl reload`)."""
    import signal
    if not dep.lab.procs.is_alive(OPS_HOST, "prometheus"):
        return
    for node in dep.topo.nodes(role="galera"):
        if not dep.lab.procs.is_alive(node.name, EXPORTER):
            start_exporter(dep, node.name)
    d = _dir(dep)
    (d / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(dep.topo, str(d)), sort_keys=False))
    (d / RULES_FILE).write_text(yaml.safe_dump(alert_rules(dep.topo), sort_keys=False))
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
    return len(seen) == sum(len(dep.topo.nodes(role=r)) for r in ("galera", "proxy")) and \
        set(seen.values()) == {"up"}


def alerts(dep) -> list[dict]:
    out = api(dep, "/api/v1/alerts") or {}
    return (out.get("data") or {}).get("alerts", [])


def _result(*args):
    from .drills import DrillResult  # lab.drills imports lab.deployment, which imports this module
    return DrillResult(*args)


class MonitoringDrills:
    """O1: a region cut off from the others fires GaleraNotPrimary for its member (and only
    its member), which clears after the heal. O2: a region's Keystone nodes stopped fire
    KeystoneOnBackups for that region, cleared once they are back. Outcomes asserted,
    durations reported."""

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

    def run_all(self, log=print) -> list:
        results = []
        for drill in (self.drill_not_primary, self.drill_keystone_backends):
            result = drill()
            log(result.line())
            results.append(result)
        return results


def require_running(dep) -> None:
    if not dep.lab.procs.is_alive(OPS_HOST, "prometheus"):
        raise LabError("the lab's Prometheus does not run (a lab started before it existed): "
                       "`./run lab down` and `./run lab up`")
