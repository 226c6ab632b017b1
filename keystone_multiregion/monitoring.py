"""Prometheus for a deployment: what to scrape, and the alerts, from the topology.

Every Galera node and every replica of a replica region runs Debian's
prometheus-mysqld-exporter (on a replica it also reads SHOW SLAVE STATUS: the replication
threads and the lag), every proxy serves HAProxy's own exporter, and every node runs Debian's prometheus-node-exporter, which also serves what the
node says about itself (`node-agent metrics`, keystone_multiregion/roles/node.py). Both are reachable from `monitoring.cidr` only (keystone_multiregion/security.py).
`prometheus_config` lists them with their region, node and role as labels. `alert_rules`
holds the alerts, with the topology's numbers written in (the cluster's size) and
`monitoring.alert_after_s` as their `for:`. `python -m keystone_multiregion monitoring --out
DIR` writes both files for an operator's Prometheus; the lab runs a real Prometheus on them
(lab/monitoring.py), and tests/test_monitoring.py runs `promtool` on them.
"""
from __future__ import annotations

from .roles.replica import MAX_LAG_S
from .security import PORTS
from .topology import REPLICA, Topology

# job -> (role, port): what Prometheus scrapes on each node of the role (None: every node).
# A job whose role the topology has no node of is left out of prometheus.yml.
JOBS = {"galera": ("galera", PORTS["mysqld_exporter"]), "replica": (REPLICA, PORTS["mysqld_exporter"]),
        "haproxy": ("proxy", PORTS["haproxy_metrics"]), "node": (None, PORTS["node_exporter"])}
# The roles whose nodes run mysqld_exporter (the lab starts it on these).
MYSQLD_EXPORTER_ROLES = tuple(role for role, port in JOBS.values() if port == PORTS["mysqld_exporter"])
RULES_FILE = "keystone-multiregion-alerts.yml"
# A certificate a node serves or trusts alerts this long before it expires.
CERTIFICATE_WARNING_DAYS = 21


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
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics", "static_configs": scrape_targets(topo, job),
                            # What a node says about itself changes only when node-agent writes it.
                            **({"scrape_interval": f"{max(topo.monitoring.scrape_interval_s, topo.monitoring.node_metrics_interval_s)}s"}
                               if job == "node" else {})}
                           for job in JOBS if scrape_targets(topo, job)],
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
        # What each node says about itself (node-agent metrics, through node_exporter).
        _rule("NodeDown", 'up{job="node"} == 0', after, "critical",
              "{{ $labels.node }} ({{ $labels.region }}): node_exporter does not answer",
              "the VM is down or cut off from the monitoring network: `openstack server show`, then "
              "`systemctl status prometheus-node-exporter` on it"),
        _rule("NodeMetricsStale",
              f'time() - keystone_multiregion_metrics_timestamp_seconds{{job="node"}} > '
              f'{3 * topo.monitoring.node_metrics_interval_s}', after, "warning",
              "{{ $labels.node }}: node-agent has not written its metrics for three intervals",
              "`systemctl status keystone-multiregion-metrics.timer keystone-multiregion-metrics.service`"),
        _rule("VipHeldByNone", 'sum by (region, vip, address) (keystone_multiregion_vip_held{job="node"}) == 0',
              after, "critical",
              "{{ $labels.vip }} ({{ $labels.address }}, {{ $labels.region }}) is held by no proxy: its clients "
              "get no answer",
              "`systemctl status keepalived haproxy` on the region's proxies; `journalctl -u keepalived` says "
              "why each is in FAULT"),
        _rule("VipHeldByTwo", 'sum by (region, vip, address) (keystone_multiregion_vip_held{job="node"}) > 1',
              after, "critical",
              "{{ $labels.vip }} ({{ $labels.address }}, {{ $labels.region }}) is held by {{ $value }} proxies: "
              "split brain",
              "the proxies do not hear each other's VRRP adverts (IP protocol 112 between them): check their "
              "security group and link"),
        _rule("MemcachedDown", 'keystone_multiregion_memcached_up{job="node"} == 0', after, "warning",
              "{{ $labels.node }} ({{ $labels.region }}): memcached does not answer; Keystone validates "
              "without its cache (slower, more database reads)",
              "`systemctl restart memcached` on the node"),
        _rule("KeystoneNodeUnhealthy", 'keystone_multiregion_keystone_healthy{job="node"} == 0', after, "warning",
              "{{ $labels.node }} ({{ $labels.region }}): Keystone's /healthcheck does not answer 200",
              "`systemctl status keystone-api` and `journalctl -u keystone-api` on the node"),
        _rule("KeystoneKeysDrifted", 'keystone_multiregion_keys_drifted{job="node"} > 0', after, "critical",
              "{{ $labels.node }}: {{ $value }} Keystone key repositories differ from what the stack pushed: "
              "tokens from other nodes may not validate here",
              "`keystone-node key-check` on the node names them; push the keys again (README: key drift)"),
        _rule("FilesDrifted", 'keystone_multiregion_files_drifted{job="node"} > 0', after, "warning",
              "{{ $labels.node }}: {{ $value }} files differ from the region stack's last push",
              "`node-agent check` on the node names them; `pulumi up` on the region's stack pushes them again"),
        _rule("CertificateExpiresSoon",
              f'keystone_multiregion_certificate_expiry_timestamp_seconds{{job="node"}} - time() < '
              f'{CERTIFICATE_WARNING_DAYS} * 86400', after, "warning",
              "{{ $labels.node }}: the certificate in {{ $labels.path }} expires in less than "
              f"{CERTIFICATE_WARNING_DAYS} days",
              "renew it (README: certificates) and run `pulumi up`: the push installs it"),
    ]
    if topo.nodes(role=REPLICA):
        rules += replica_rules(after)
    if topo.backup is not None:
        max_age_s = topo.backup.max_age_h * 3600
        rules += [
            _rule("BackupTooOld",
                  f'time() - keystone_multiregion_backup_counted_from_timestamp_seconds{{job="node"}} > {max_age_s}',
                  after, "critical",
                  "{{ $labels.region }} has no good backup newer than " + f"{topo.backup.max_age_h} h "
                  "(its backup node {{ $labels.node }})",
                  "`systemctl status keystone-multiregion-backup.service` and `galera-node backups` on the node; "
                  "`galera-node backup` takes one now"),
            _rule("BackupFailed", 'keystone_multiregion_backup_last_run_ok{job="node"} == 0', after, "warning",
                  "{{ $labels.node }} ({{ $labels.region }}): the last backup run failed",
                  "`journalctl -u keystone-multiregion-backup.service` on the node says why"),
        ]
    return {"groups": [{"name": "keystone-multiregion", "rules": rules}]}


def replica_rules(after: int) -> list[dict]:
    """A replica region's replicas (agents/replica-node.py), from mysqld_exporter's slave-status
    collector: a replica whose IO or SQL thread stopped, or that has no replication at all
    (SHOW SLAVE STATUS empty: no such series while MariaDB answers); one beyond MAX_LAG_S
    (its health check already answers 503 there: the proxies prefer the other replica); one
    whose MariaDB or exporter is gone (its slave-status series vanish with it). While the IO
    thread cannot reach its source, Seconds_Behind_Master is NULL and the exporter leaves the
    lag out: ReplicaNotReplicating covers that time, not ReplicaLagging."""
    threads = 'mysql_slave_status_slave_io_running{job="replica"} * mysql_slave_status_slave_sql_running{job="replica"}'
    return [
        _rule("ReplicaNotReplicating",
              f'max by (job, region, node) (({threads}) == 0 or (mysql_up{{job="replica"}} == 1 unless on (node) '
              'mysql_slave_status_slave_sql_running{job="replica"}))', after, "critical",
              "{{ $labels.node }} ({{ $labels.region }}) does not replicate (its IO or SQL thread stopped, or no "
              "replication is configured): the region's Keystone reads ever older data from it",
              "`replica-node status` on the node says which thread stopped and why (last_io_error, "
              "last_sql_error); `replica-node switch` moves it to the next source that holds its position"),
        _rule("ReplicaLagging", f'mysql_slave_status_seconds_behind_master{{job="replica"}} > {MAX_LAG_S}', after,
              "warning",
              "{{ $labels.node }} ({{ $labels.region }}) is {{ $value }} s behind its source (over "
              f"{MAX_LAG_S} s): its health check fails, the proxies prefer the other replica",
              "`replica-node status` on the node; a slow or far source: `replica-node switch --to NODE` to "
              "another; else the source's write load or the WAN to it"),
        _rule("ReplicaDown", 'up{job="replica"} == 0 or mysql_up{job="replica"} == 0', after, "critical",
              "{{ $labels.node }} ({{ $labels.region }}): the replica's MariaDB or its exporter does not answer",
              "`systemctl status mariadb prometheus-mysqld-exporter` on the node; `replica-node status`"),
    ]
