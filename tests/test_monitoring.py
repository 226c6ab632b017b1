"""Prometheus for a deployment (keystone_multiregion/monitoring.py): the scrape targets, and
the alert rules checked and unit-tested by Debian's promtool."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from helpers import ROOT, with_replica_region
from keystone_multiregion.monitoring import RULES_FILE, alert_rules, prometheus_config
from keystone_multiregion.roles.replica import MAX_LAG_S
from keystone_multiregion.security import PORTS, security_rules
from keystone_multiregion.topology import REPLICA, load_topology, load_topology_file

TOPO = load_topology_file(ROOT / "topology.yaml")


@pytest.fixture(scope="module")
def promtool():
    """Debian's prometheus package (promtool), installed without starting its service."""
    from lab import packages
    packages.ensure_packages(["prometheus"])
    return "/usr/bin/promtool"


def test_every_exporter_is_scraped_with_its_region_and_node():
    cfg = prometheus_config(TOPO, "/etc/prometheus")
    jobs = {j["job_name"]: j["static_configs"] for j in cfg["scrape_configs"]}
    assert {t["targets"][0] for t in jobs["galera"]} == {f"{n.address}:9104" for n in TOPO.nodes(role="galera")}
    assert {t["targets"][0] for t in jobs["haproxy"]} == {f"{n.address}:8405" for n in TOPO.nodes(role="proxy")}
    assert {t["targets"][0] for t in jobs["node"]} == {f"{n.address}:9100" for n in TOPO.nodes()}
    first = jobs["galera"][0]["labels"]
    assert first == {"region": "region-a", "node": "galera-region-a-1", "role": "galera"}
    assert cfg["rule_files"] == [f"/etc/prometheus/{RULES_FILE}"]
    assert cfg["global"]["scrape_interval"] == "15s"


def _write(tmp_path, rules) -> str:
    path = tmp_path / RULES_FILE
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return str(path)


def test_promtool_accepts_the_rules_and_the_config(promtool, tmp_path):
    _write(tmp_path, alert_rules(TOPO))
    out = subprocess.run([promtool, "check", "rules", str(tmp_path / RULES_FILE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(TOPO, str(tmp_path))))
    out = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _expected(name, labels, value=None, topo=TOPO):
    """An alert as promtool reports it: its labels, and its annotations with the labels (and
    the value) written in."""
    import re
    rule = next(r for r in alert_rules(topo)["groups"][0]["rules"] if r["alert"] == name)

    def expand(text):
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        return text.replace("{{ $value }}", str(value))
    return {"exp_labels": {"severity": rule["labels"]["severity"], **labels},
            "exp_annotations": {k: expand(v) for k, v in rule["annotations"].items()}}


def test_promtool_unit_tests_of_every_alert(promtool, tmp_path):
    """Each alert fires on the series that mean trouble, after `for:`, and not before; the
    healthy series of the other nodes fire nothing."""
    rules = _write(tmp_path, alert_rules(TOPO))
    after = TOPO.monitoring.alert_after_s
    g = lambda node, region: f'{{job="galera", node="{node}", region="{region}"}}'  # noqa: E731
    h = lambda node, region: f'{{job="haproxy", node="{node}", region="{region}", proxy="keystone"}}'  # noqa: E731
    size = len(TOPO.galera_members)
    series = [
        # galera-region-c-1: cut off from the majority (non-Primary, sees 3 members) from minute 1 on
        {"series": "mysql_global_status_wsrep_cluster_status" + g("galera-region-c-1", "region-c"),
         "values": "1 0x20"},
        {"series": "mysql_global_status_wsrep_cluster_status" + g("galera-region-a-1", "region-a"), "values": "1x21"},
        {"series": "mysql_global_status_wsrep_cluster_size" + g("galera-region-a-1", "region-a"),
         "values": f"{size}x21"},
        {"series": "mysql_global_status_wsrep_cluster_size" + g("galera-region-c-1", "region-c"),
         "values": f"{size} 3x20"},
        {"series": "up" + g("galera-region-a-1", "region-a"), "values": "1x21"},
        {"series": "up" + g("galera-region-b-1", "region-b"), "values": "1 0x20"},  # its node is gone
        {"series": "mysql_up" + g("galera-region-a-1", "region-a"), "values": "1x21"},
        # flow control: paused 0.5 s of every second on region-b-2, never on region-a-1
        {"series": "mysql_global_status_wsrep_flow_control_paused_ns" + g("galera-region-b-2", "region-b"),
         "values": "0+30000000000x21"},
        {"series": "mysql_global_status_wsrep_flow_control_paused_ns" + g("galera-region-a-1", "region-a"),
         "values": "0x21"},
        # region-b's Keystone nodes all down, seen by both proxies; region-a's up
        {"series": "haproxy_backend_active_servers" + h("proxy-region-b-1", "region-b"), "values": "3 0x20"},
        {"series": "haproxy_backend_active_servers" + h("proxy-region-b-2", "region-b"), "values": "3 0x20"},
        {"series": "haproxy_backend_active_servers" + h("proxy-region-a-1", "region-a"), "values": "3x21"},
        {"series": 'up{job="haproxy", node="proxy-region-a-2", region="region-a"}', "values": "1 0x20"},
    ]
    minutes = lambda m: f"{m}m"  # noqa: E731
    fired = f"{60 + after + 60}s"  # the fault at 1m, `for:` after it, a minute of margin for evaluation steps
    tests = [{"interval": "1m", "input_series": series, "alert_rule_test": [
        {"eval_time": minutes(0), "alertname": name, "exp_alerts": []}
        for name in ("GaleraNotPrimary", "GaleraMemberDown", "GaleraClusterSizeBelowTopology", "KeystoneOnBackups",
                     "HAProxyDown")] + [
        {"eval_time": fired, "alertname": "GaleraNotPrimary", "exp_alerts": [
            _expected("GaleraNotPrimary", {"job": "galera", "node": "galera-region-c-1", "region": "region-c"})]},
        {"eval_time": fired, "alertname": "GaleraMemberDown", "exp_alerts": [
            _expected("GaleraMemberDown", {"job": "galera", "node": "galera-region-b-1", "region": "region-b"})]},
        {"eval_time": fired, "alertname": "GaleraClusterSizeBelowTopology", "exp_alerts": [
            _expected("GaleraClusterSizeBelowTopology",
                      {"job": "galera", "node": "galera-region-c-1", "region": "region-c"}, value=3)]},
        {"eval_time": "10m", "alertname": "GaleraFlowControlPaused", "exp_alerts": [
            _expected("GaleraFlowControlPaused", {"job": "galera", "node": "galera-region-b-2", "region": "region-b"})]},
        {"eval_time": fired, "alertname": "KeystoneOnBackups", "exp_alerts": [
            _expected("KeystoneOnBackups", {"region": "region-b"})]},
        {"eval_time": fired, "alertname": "HAProxyDown", "exp_alerts": [
            _expected("HAProxyDown", {"job": "haproxy", "node": "proxy-region-a-2", "region": "region-a"})]},
    ]}]
    test_file = tmp_path / "alerts-test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [rules], "evaluation_interval": "1m", "tests": tests}))
    out = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_unit_tests_of_the_nodes_own_alerts(promtool, tmp_path):
    """What the nodes say about themselves (node-agent metrics via node_exporter): a VIP held
    by no proxy and one held by two, memcached down, Keystone unhealthy, keys and files
    drifted, a certificate expiring, metrics gone stale, a node_exporter gone; the healthy
    series beside them fire nothing."""
    rules = _write(tmp_path, alert_rules(TOPO))
    n = lambda node, region, **more: "{" + ", ".join(  # noqa: E731
        f'{k}="{v}"' for k, v in {"job": "node", "node": node, "region": region, **more}.items()) + "}"
    v1, v2, v3 = [(v.name, v.address) for v in TOPO.vips("region-a")][:3]
    vip = lambda proxy, v: "keystone_multiregion_vip_held" + n(proxy, "region-a", vip=v[0], address=v[1])  # noqa: E731
    day = 86400
    series = [
        # v1: proxy-1 lets it go at minute 1 and nobody takes it; v2: both hold it from minute 1; v3: fine
        {"series": vip("proxy-region-a-1", v1), "values": "1 0x20"},
        {"series": vip("proxy-region-a-2", v1), "values": "0x21"},
        {"series": vip("proxy-region-a-1", v2), "values": "0 1x20"},
        {"series": vip("proxy-region-a-2", v2), "values": "1x21"},
        {"series": vip("proxy-region-a-1", v3), "values": "1x21"},
        {"series": vip("proxy-region-a-2", v3), "values": "0x21"},
        {"series": "keystone_multiregion_memcached_up" + n("memcached-region-b-1", "region-b"), "values": "1 0x20"},
        {"series": "keystone_multiregion_memcached_up" + n("memcached-region-a-1", "region-a"), "values": "1x21"},
        {"series": "keystone_multiregion_keystone_healthy" + n("keystone-region-c-1", "region-c"),
         "values": "1 0x20"},
        {"series": "keystone_multiregion_keys_drifted" + n("keystone-region-c-2", "region-c"), "values": "0 2x20"},
        {"series": "keystone_multiregion_files_drifted" + n("galera-region-b-1", "region-b"), "values": "0 1x20"},
        # certificates: one expires 10 days after the start, one in a year
        {"series": "keystone_multiregion_certificate_expiry_timestamp_seconds"
                   + n("proxy-region-b-1", "region-b", path="/etc/haproxy/certs/public.pem"),
         "values": f"{10 * day}x21"},
        {"series": "keystone_multiregion_certificate_expiry_timestamp_seconds"
                   + n("proxy-region-b-2", "region-b", path="/etc/haproxy/certs/public.pem"),
         "values": f"{365 * day}x21"},
        # galera-region-a-1's timer stops writing after minute 0 (its timestamp stays at 0)
        {"series": "keystone_multiregion_metrics_timestamp_seconds" + n("galera-region-a-1", "region-a"),
         "values": "0x21"},
        {"series": "keystone_multiregion_metrics_timestamp_seconds" + n("galera-region-a-2", "region-a"),
         "values": "0+60x21"},
        {"series": "up" + n("memcached-region-c-1", "region-c"), "values": "1 0x20"},
        {"series": "up" + n("memcached-region-a-1", "region-a"), "values": "1x21"},
    ]
    after = TOPO.monitoring.alert_after_s
    fired = f"{60 + after + 60}s"
    names = ("VipHeldByNone", "VipHeldByTwo", "MemcachedDown", "KeystoneNodeUnhealthy", "KeystoneKeysDrifted",
             "FilesDrifted", "NodeDown")
    expect = {
        "VipHeldByNone": [_expected("VipHeldByNone", {"region": "region-a", "vip": v1[0], "address": v1[1]})],
        "VipHeldByTwo": [_expected("VipHeldByTwo", {"region": "region-a", "vip": v2[0], "address": v2[1]}, value=2)],
        "MemcachedDown": [_expected("MemcachedDown", {"job": "node", "node": "memcached-region-b-1",
                                                      "region": "region-b"})],
        "KeystoneNodeUnhealthy": [_expected("KeystoneNodeUnhealthy", {"job": "node", "node": "keystone-region-c-1",
                                                                      "region": "region-c"})],
        "KeystoneKeysDrifted": [_expected("KeystoneKeysDrifted", {"job": "node", "node": "keystone-region-c-2",
                                                                  "region": "region-c"}, value=2)],
        "FilesDrifted": [_expected("FilesDrifted", {"job": "node", "node": "galera-region-b-1",
                                                    "region": "region-b"}, value=1)],
        "NodeDown": [_expected("NodeDown", {"job": "node", "node": "memcached-region-c-1", "region": "region-c"})],
    }
    cert = {"job": "node", "node": "proxy-region-b-1", "region": "region-b", "path": "/etc/haproxy/certs/public.pem"}
    stale = {"job": "node", "node": "galera-region-a-1", "region": "region-a"}
    tests = [{"interval": "1m", "input_series": series, "alert_rule_test": [
        {"eval_time": "0m", "alertname": name, "exp_alerts": []} for name in names] + [
        {"eval_time": fired, "alertname": name, "exp_alerts": expect[name]} for name in names] + [
        {"eval_time": fired, "alertname": "CertificateExpiresSoon",
         "exp_alerts": [_expected("CertificateExpiresSoon", cert)]},
        {"eval_time": "20m", "alertname": "NodeMetricsStale", "exp_alerts": [_expected("NodeMetricsStale", stale)]},
    ]}]
    test_file = tmp_path / "node-alerts-test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [rules], "evaluation_interval": "1m", "tests": tests}))
    out = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_promtool_sees_an_alert_that_should_fire_but_does_not(promtool, tmp_path):
    """The unit test above can fail: the same rules, a healthy node expected to alert."""
    rules = _write(tmp_path, alert_rules(TOPO))
    tests = [{"interval": "1m", "input_series": [
        {"series": 'mysql_global_status_wsrep_cluster_status{job="galera", node="n", region="r"}', "values": "1x10"}],
        "alert_rule_test": [{"eval_time": "10m", "alertname": "GaleraNotPrimary",
                             "exp_alerts": [{"exp_labels": {"severity": "critical", "job": "galera", "node": "n",
                                                            "region": "r"}}]}]}]
    test_file = tmp_path / "alerts-test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [rules], "evaluation_interval": "1m", "tests": tests}))
    out = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert out.returncode != 0 and "GaleraNotPrimary" in out.stdout + out.stderr


def test_alerts_wait_the_topologys_alert_after():
    data = yaml.safe_load((ROOT / "topology.yaml").read_text())
    data["monitoring"] = {"alert_after_s": 20}
    from keystone_multiregion.topology import load_topology
    rules = alert_rules(load_topology(data))["groups"][0]["rules"]
    assert {r["for"] for r in rules} == {"20s"}
    assert 'mysql_global_status_wsrep_cluster_size{job="galera"} < 9' in [r["expr"] for r in rules]


def test_promtool_unit_tests_of_the_backup_alerts(promtool, tmp_path):
    """BackupTooOld fires for the region whose last good backup (or, before the first, the
    credentials' push) is older than backup.max_age_h; BackupFailed for a failed last run."""
    rules = _write(tmp_path, alert_rules(TOPO))
    n = lambda node, region: "{" + f'job="node", node="{node}", region="{region}"' + "}"  # noqa: E731
    max_age = TOPO.backup.max_age_h * 3600
    series = [
        # region-a: backed up every hour; region-b: its last good backup at 0, nothing since
        {"series": "keystone_multiregion_backup_counted_from_timestamp_seconds" + n("galera-region-a-1", "region-a"),
         "values": "0+60x300"},
        {"series": "keystone_multiregion_backup_counted_from_timestamp_seconds" + n("galera-region-b-1", "region-b"),
         "values": "0x300"},
        {"series": "keystone_multiregion_backup_last_run_ok" + n("galera-region-a-1", "region-a"), "values": "1x300"},
        {"series": "keystone_multiregion_backup_last_run_ok" + n("galera-region-b-1", "region-b"),
         "values": "1x60 0x240"},
    ]
    late = {"job": "node", "node": "galera-region-b-1", "region": "region-b"}
    tests = [{"interval": "1m", "input_series": series, "alert_rule_test": [
        {"eval_time": "1h", "alertname": "BackupTooOld", "exp_alerts": []},
        {"eval_time": "4h", "alertname": "BackupTooOld", "exp_alerts": [_expected("BackupTooOld", late)]},
        {"eval_time": "30m", "alertname": "BackupFailed", "exp_alerts": []},
        {"eval_time": "3h", "alertname": "BackupFailed", "exp_alerts": [_expected("BackupFailed", late)]},
    ]}]
    assert max_age < 4 * 3600
    test_file = tmp_path / "backup-alerts-test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [rules], "evaluation_interval": "1m", "tests": tests}))
    out = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


# -- a replica region's replicas ------------------------------------------------------------

REPLICA_TOPO = load_topology(with_replica_region(roles={"replica": {"count": 3}}))
REPLICA_ALERTS = ("ReplicaNotReplicating", "ReplicaLagging", "ReplicaDown")


def test_replicas_are_scraped_on_their_exporter_from_the_monitoring_network_only():
    jobs = {j["job_name"]: j["static_configs"] for j in prometheus_config(REPLICA_TOPO)["scrape_configs"]}
    replicas = REPLICA_TOPO.nodes(role=REPLICA)
    assert {t["targets"][0] for t in jobs["replica"]} == {f"{n.address}:9104" for n in replicas}
    assert jobs["replica"][0]["labels"] == {"region": "region-r", "node": "replica-region-r-1", "role": REPLICA}
    assert not {t["targets"][0] for t in jobs["galera"]} & {t["targets"][0] for t in jobs["replica"]}
    # Without a replica region: no replica job, no replica alert.
    assert "replica" not in {j["job_name"] for j in prometheus_config(TOPO)["scrape_configs"]}
    assert not {r["alert"] for r in alert_rules(TOPO)["groups"][0]["rules"]} & set(REPLICA_ALERTS)
    opened = {r.remote for r in security_rules(REPLICA_TOPO, "region-r")
              if r.group == REPLICA and r.port == PORTS["mysqld_exporter"]}
    assert opened == {REPLICA_TOPO.monitoring.cidr}


def test_a_replicas_exporter_reads_slave_status_with_flags_the_package_accepts():
    from keystone_multiregion import pki
    from keystone_multiregion.render import render_node
    from keystone_multiregion.roles.galera import MYSQLD_EXPORTER_DEFAULTS
    import shlex
    from lab import packages
    packages.ensure_packages(["prometheus-mysqld-exporter"])
    topo = load_topology_file(ROOT / "lab" / "topology-region-r.yaml")
    secrets = pki.generate_secrets(topo)
    args = {}
    for name in ("replica-lab-r-1", "galera-lab-a-1"):
        defaults = {f.path: f.content for f in render_node(topo, name, secrets).files}[MYSQLD_EXPORTER_DEFAULTS]
        (line,) = [x for x in defaults.splitlines() if x.startswith("ARGS=")]
        (args[name],) = [shlex.split(v) for v in shlex.split(line.split("=", 1)[1])]
    assert "--collect.slave_status" in args["replica-lab-r-1"]
    assert "--collect.slave_status" not in args["galera-lab-a-1"]
    for argv in args.values():  # kingpin refuses an unknown flag before it prints --help
        out = subprocess.run(["/usr/bin/prometheus-mysqld-exporter", *argv, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    out = subprocess.run(["/usr/bin/prometheus-mysqld-exporter", "--collect.no_such_collector", "--help"],
                         capture_output=True, text=True)
    assert out.returncode != 0


def test_promtool_unit_tests_of_the_replica_alerts(promtool, tmp_path):
    """ReplicaNotReplicating for a stopped IO thread and for a replica with no replication at
    all, ReplicaLagging beyond MAX_LAG_S (never at it), ReplicaDown for a gone exporter: each
    pending at its fault and firing only after `for:`; the healthy replicas fire nothing."""
    rules = _write(tmp_path, alert_rules(REPLICA_TOPO))
    after = REPLICA_TOPO.monitoring.alert_after_s
    assert after >= 60  # the fault at 1m is still pending at 1m + after - 1m
    r = lambda node, **more: "{" + ", ".join(  # noqa: E731
        f'{k}="{v}"' for k, v in {"job": "replica", "node": node, "region": "region-r", **more}.items()) + "}"
    s = lambda metric, node, values: {  # noqa: E731
        "series": f"mysql_slave_status_{metric}" + r(node, master_host="10.10.1.42", connection_name=""),
        "values": values}
    one, two, three = (n.name for n in REPLICA_TOPO.nodes(role=REPLICA))
    series = [
        # replica 1: its IO thread stops at minute 1 (Connecting: 0; the lag becomes NULL, no sample)
        s("slave_io_running", one, "1 0x20"), s("slave_sql_running", one, "1x21"),
        s("seconds_behind_master", one, "0 _x20"),
        # replica 2: both threads run; exactly MAX_LAG_S behind at minute 0, then 90 s more
        s("slave_io_running", two, "1x21"), s("slave_sql_running", two, "1x21"),
        s("seconds_behind_master", two, f"{MAX_LAG_S} {MAX_LAG_S + 90}x20"),
        # replica 3: its exporter gone from minute 1 (its slave series vanish with it)
        s("slave_io_running", three, "1 _x20"), s("slave_sql_running", three, "1 _x20"),
        s("seconds_behind_master", three, "0 _x20"),
    ] + [{"series": f"{m}" + r(n), "values": "1x21"} for m in ("up", "mysql_up") for n in (one, two)] + [
        {"series": "up" + r(three), "values": "1 0x20"}, {"series": "mysql_up" + r(three), "values": "1 _x20"}]
    pending = f"{after}s"              # the fault at 1m, `for:` not yet over
    fired = f"{60 + after + 60}s"      # `for:` over, a minute of margin for evaluation steps
    labels = lambda node: {"job": "replica", "node": node, "region": "region-r"}  # noqa: E731
    lagging = {**labels(two), "master_host": "10.10.1.42"}  # an empty label is no label
    expect = {
        "ReplicaNotReplicating": [_expected("ReplicaNotReplicating", labels(one), topo=REPLICA_TOPO)],
        "ReplicaLagging": [_expected("ReplicaLagging", lagging, value=MAX_LAG_S + 90, topo=REPLICA_TOPO)],
        "ReplicaDown": [_expected("ReplicaDown", labels(three), topo=REPLICA_TOPO)],
    }
    # Never seeded, or RESET SLAVE ALL: MariaDB answers, SHOW SLAVE STATUS is empty.
    unconfigured = [{"series": f"{m}" + r(one), "values": "1x21"} for m in ("up", "mysql_up")] + [
        {"series": f"{m}" + r(two), "values": "1x21"} for m in ("up", "mysql_up")] + [
        s("slave_io_running", two, "1x21"), s("slave_sql_running", two, "1x21"),
        s("seconds_behind_master", two, f"{MAX_LAG_S}x21")]  # at the bound for 21 minutes: not lagging
    tests = [
        {"interval": "1m", "input_series": series, "alert_rule_test": [
            {"eval_time": t, "alertname": name, "exp_alerts": []} for name in REPLICA_ALERTS for t in ("0m", pending)
        ] + [{"eval_time": fired, "alertname": name, "exp_alerts": expect[name]} for name in REPLICA_ALERTS]},
        {"interval": "1m", "input_series": unconfigured, "alert_rule_test": [
            {"eval_time": "0m", "alertname": "ReplicaNotReplicating", "exp_alerts": []},
            {"eval_time": fired, "alertname": "ReplicaNotReplicating",
             "exp_alerts": [_expected("ReplicaNotReplicating", labels(one), topo=REPLICA_TOPO)]},
            {"eval_time": "20m", "alertname": "ReplicaLagging", "exp_alerts": []}]},
    ]
    test_file = tmp_path / "replica-alerts-test.yml"
    test_file.write_text(yaml.safe_dump({"rule_files": [rules], "evaluation_interval": "1m", "tests": tests}))
    out = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
    out = subprocess.run([promtool, "check", "rules", rules], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
