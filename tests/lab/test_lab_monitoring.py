"""Prometheus in the lab (#13): every exporter scraped from the monitoring network only, and
drills O1-O4 that see the shipped alerts fire for the right node or region and clear; every
node's own metrics (node-agent metrics, served by node_exporter) as the node is."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab


def test_prometheus_scrapes_every_exporter(deployment):
    from lab import monitoring
    topo = deployment.topo
    seen = monitoring.targets(deployment)
    want = {f"http://{n.address}:9104/metrics" for n in topo.nodes(role="galera")} | \
        {f"http://{n.address}:8405/metrics" for n in topo.nodes(role="proxy")} | \
        {f"http://{n.address}:9100/metrics" for n in topo.nodes()}
    assert set(seen) == want and set(seen.values()) == {"up"}
    # What the alerts read, as the exporters report it on a healthy cluster.
    out = monitoring.api(deployment, "/api/v1/query?query=mysql_global_status_wsrep_cluster_status")
    assert {r["metric"]["node"]: r["value"][1] for r in out["data"]["result"]} == \
        {n.name: "1" for n in topo.nodes(role="galera")}
    out = monitoring.api(deployment, "/api/v1/query?query=haproxy_backend_active_servers%7Bproxy%3D%22keystone%22%7D")
    assert {r["metric"]["node"]: r["value"][1] for r in out["data"]["result"]} == \
        {n.name: str(len(topo.nodes(n.region, "keystone"))) for n in topo.nodes(role="proxy")}
    assert monitoring.alerts(deployment) == []


def test_every_node_says_what_it_is_through_node_exporter(deployment):
    """What each node's metrics timer wrote (node-agent metrics), as Prometheus scraped it:
    every VIP held by exactly one proxy (its master), every memcached answering, every
    Keystone node healthy with its keys as pushed, no pushed file drifted, and the expiry of
    the certificates the nodes carry (the lab's are valid for more than the warning)."""
    import time

    from keystone_multiregion.monitoring import CERTIFICATE_WARNING_DAYS
    from lab import monitoring
    from lab.layers.proxy import wait
    topo = deployment.topo

    def query(expr):
        from urllib.parse import quote
        out = monitoring.api(deployment, f"/api/v1/query?query={quote(expr)}") or {}
        return [(r["metric"], float(r["value"][1])) for r in (out.get("data") or {}).get("result", [])]
    # Every node has written at least once (the timers start with the lab).
    assert wait(lambda: len(query("keystone_multiregion_metrics_timestamp_seconds")) == len(topo.nodes()), 60, 1)
    held = {(m["vip"], m["node"]): v for m, v in query("keystone_multiregion_vip_held")}
    assert held == {(v.name, p.name): (1.0 if v.master == p.name else 0.0)
                    for r in topo.regions for v in topo.vips(r.name) for p in topo.nodes(r.name, "proxy")}
    assert {m["node"]: v for m, v in query("keystone_multiregion_memcached_up")} == \
        {n.name: 1.0 for n in topo.nodes(role="memcached")}
    assert {m["node"]: v for m, v in query("keystone_multiregion_keystone_healthy")} == \
        {n.name: 1.0 for n in topo.nodes(role="keystone")}
    assert {m["node"]: v for m, v in query("keystone_multiregion_keys_drifted")} == \
        {n.name: 0.0 for n in topo.nodes(role="keystone")}
    assert {m["node"]: v for m, v in query("keystone_multiregion_files_drifted")} == \
        {n.name: 0.0 for n in topo.nodes()}
    certs = query("keystone_multiregion_certificate_expiry_timestamp_seconds")
    assert {m["node"] for m, _ in certs} >= {n.name for n in topo.nodes(role="proxy")}
    assert all(v - time.time() > CERTIFICATE_WARNING_DAYS * 86400 for _, v in certs), certs


def test_exporters_refuse_a_scrape_from_outside_the_monitoring_network(deployment):
    """The security groups (nftables in every node) admit 9104, 8405 and 9100 from
    monitoring.cidr only: a Keystone node of the same region gets no answer."""
    from lab import monitoring
    galera, proxy = deployment.topo.nodes("lab-a", "galera")[0], deployment.topo.nodes("lab-a", "proxy")[0]
    keystone = deployment.topo.nodes("lab-a", "keystone")[0].name
    assert monitoring._get(deployment, keystone, f"http://{galera.address}:9104/metrics", timeout=2) is None
    assert monitoring._get(deployment, keystone, f"http://{proxy.address}:8405/metrics", timeout=2) is None
    assert monitoring._get(deployment, keystone, f"http://{galera.address}:9100/metrics", timeout=2) is None
    assert "node_load1" in monitoring._get(deployment, "ops", f"http://{galera.address}:9100/metrics")
    assert "mysql_up 1" in monitoring._get(deployment, "ops", f"http://{galera.address}:9104/metrics")


def test_o1_region_cut_off_fires_galera_not_primary_for_its_member_only(deployment):
    from lab.monitoring import MonitoringDrills
    result = MonitoringDrills(deployment).drill_not_primary()
    print(result.line())
    assert result.ok, result.line()
    assert result.measured["alerted_for"] == [deployment.topo.nodes("lab-c", "galera")[0].name]


def test_o2_region_keystone_nodes_stopped_fires_keystone_on_backups(deployment):
    from lab.monitoring import MonitoringDrills
    result = MonitoringDrills(deployment).drill_keystone_backends()
    print(result.line())
    assert result.ok, result.line()
    assert result.measured["alerted_for"] == ["lab-b"]


def test_o3_both_keepalived_of_a_region_stopped_fires_vip_held_by_none(deployment):
    from lab.monitoring import MonitoringDrills
    result = MonitoringDrills(deployment).drill_vip_held_by_none()
    print(result.line())
    assert result.ok, result.line()
    assert result.measured["alerted_for"] == ["lab-c"]


def test_o4_memcached_stopped_fires_memcached_down_for_that_node(deployment):
    from lab.monitoring import MonitoringDrills
    result = MonitoringDrills(deployment).drill_memcached_down()
    print(result.line())
    assert result.ok, result.line()
    assert result.measured["alerted_for"] == [deployment.topo.nodes("lab-b", "memcached")[0].name]
