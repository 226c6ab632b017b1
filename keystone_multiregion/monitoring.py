"""Prometheus for a deployment: what to scrape, and the alerts, from the topology.

Every Galera node runs Debian's prometheus-mysqld-exporter, and every proxy serves HAProxy's
own exporter. Both are reachable from `monitoring.cidr` only (keystone_multiregion/security.py).
`prometheus_config` lists them with their region, node and role as labels. `alert_rules`
holds the alerts, with the topology's numbers written in (the cluster's size) and
`monitoring.alert_after_s` as their `for:`. `python -m keystone_multiregion monitoring --out
DIR` writes both files for an operator's Prometheus; the lab runs a real Prometheus on them
(lab/monitoring.py), and tests/test_monitoring.py runs `promtool` on them.
"""
from __future__ import annotations

from .security import PORTS
from .topology import Topology

# job -> (role, port): what Prometheus scrapes on each node of the role.
JOBS = {"galera": ("galera", PORTS["mysqld_exporter"]), "haproxy": ("proxy", PORTS["haproxy_metrics"])}
RULES_FILE = "keystone-multiregion-alerts.yml"


def scrape_targets(topo: Topology, job: str) -> list[dict]:
    role, port = JOBS[job]
    return [{"targets": [f"{n.address}:{port}"], "labels": {"region": n.region, "node": n.name, "role": n.role}}
            for n in topo.nodes(role=role)]


def prometheus_config(topo: Topology, rules_dir: str = ".") -> dict:
    interval = f"{topo.monitoring.scrape_interval_s}s"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "external_labels": {"deployment": topo.name}},
        "rule_files": [f"{rules_dir.rstrip('/')}/{RULES_FILE}"],
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics", "static_configs": scrape_targets(topo, job)}
                           for job in JOBS],
    }


def _rule(name: str, expr: str, after_s: int, severity: str, summary: str, action: str) -> dict:
    return {"alert": name, "expr": expr, "for": f"{after_s}s", "labels": {"severity": severity},
            "annotations": {"summary": summary, "action": action}}


def alert_rules(topo: Topology) -> dict:
    after = topo.monitoring.alert_after_s
    members = len(topo.galera_members)
    rules = [
        _rule("GaleraNotPrimary", 'mysql_global_status_wsrep_cluster_status{job="galera"} == 0', after, "critical",
              "{{ $labels.node }} ({{ $labels.region }}) is outside the Primary component: it serves reads, "
              "refuses writes",
              "the region is cut off from the majority: check the WAN links of {{ $labels.region }}; it rejoins "
              "by itself when they are back"),
        _rule("GaleraMemberDown", 'up{job="galera"} == 0 or mysql_up{job="galera"} == 0', after, "critical",
              "{{ $labels.node }} ({{ $labels.region }}): MariaDB or its exporter does not answer",
              "`systemctl status mariadb prometheus-mysqld-exporter` on the node; `galera-node status`"),
        _rule("GaleraClusterSizeBelowTopology",
              f'mysql_global_status_wsrep_cluster_size{{job="galera"}} < {members}', after, "warning",
              f"{{{{ $labels.node }}}} sees {{{{ $value }}}} of the topology's {members} Galera members",
              "a member is away: the cluster has less margin before it loses quorum; bring it back before "
              "any planned restart (node-agent refuses restarts meanwhile)"),
        _rule("GaleraFlowControlPaused",
              'rate(mysql_global_status_wsrep_flow_control_paused_ns{job="galera"}[5m]) > 1e8', after, "warning",
              "{{ $labels.node }}: replication paused by flow control more than 10% of the time",
              "a slow member holds the cluster back: look for the node whose receive queue grows "
              "(wsrep_local_recv_queue) and for the WAN latency to it"),
        _rule("KeystoneOnBackups",
              'max by (region) (haproxy_backend_active_servers{job="haproxy", proxy="keystone"}) == 0', after,
              "critical",
              "every Keystone node of {{ $labels.region }} is down: its endpoint answers from other regions' nodes",
              "restart keystone-api on the region's Keystone nodes (`systemctl status keystone-api`)"),
        _rule("HAProxyDown", 'up{job="haproxy"} == 0', after, "critical",
              "{{ $labels.node }} ({{ $labels.region }}): HAProxy's exporter does not answer",
              "`systemctl status haproxy keepalived` on the node: its VIPs should be on the other proxy"),
    ]
    return {"groups": [{"name": "keystone-multiregion", "rules": rules}]}
