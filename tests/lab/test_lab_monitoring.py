"""Prometheus in the lab (#13): every exporter scraped from the monitoring network only, and
drills O1/O2 that see the shipped alerts fire for the right node or region and clear."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab


def test_prometheus_scrapes_every_exporter(deployment):
    from lab import monitoring
    topo = deployment.topo
    seen = monitoring.targets(deployment)
    want = {f"http://{n.address}:9104/metrics" for n in topo.nodes(role="galera")} | \
        {f"http://{n.address}:8405/metrics" for n in topo.nodes(role="proxy")}
    assert set(seen) == want and set(seen.values()) == {"up"}
    # What the alerts read, as the exporters report it on a healthy cluster.
    out = monitoring.api(deployment, "/api/v1/query?query=mysql_global_status_wsrep_cluster_status")
    assert {r["metric"]["node"]: r["value"][1] for r in out["data"]["result"]} == \
        {n.name: "1" for n in topo.nodes(role="galera")}
    out = monitoring.api(deployment, "/api/v1/query?query=haproxy_backend_active_servers%7Bproxy%3D%22keystone%22%7D")
    assert {r["metric"]["node"]: r["value"][1] for r in out["data"]["result"]} == \
        {n.name: str(len(topo.nodes(n.region, "keystone"))) for n in topo.nodes(role="proxy")}
    assert monitoring.alerts(deployment) == []


def test_exporters_refuse_a_scrape_from_outside_the_monitoring_network(deployment):
    """The security groups (nftables in every node) admit 9104 and 8405 from monitoring.cidr
    only: a Keystone node of the same region gets no answer."""
    from lab import monitoring
    galera, proxy = deployment.topo.nodes("lab-a", "galera")[0], deployment.topo.nodes("lab-a", "proxy")[0]
    keystone = deployment.topo.nodes("lab-a", "keystone")[0].name
    assert monitoring._get(deployment, keystone, f"http://{galera.address}:9104/metrics", timeout=2) is None
    assert monitoring._get(deployment, keystone, f"http://{proxy.address}:8405/metrics", timeout=2) is None
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
