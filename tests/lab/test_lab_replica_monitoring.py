"""A replica region's monitoring in the lab (#15): lab-r (lab/topology-region-r.yaml) added to
the session's running lab (drill R0, as tests/lab/test_lab_replica.py adds it), its replicas'
mysqld_exporter scraped by the lab's Prometheus from the monitoring network, what the
replica alerts read, and drill O5 (a stopped IO thread fires ReplicaNotReplicating for that
replica only, cleared once it replicates again); lab-r removed again at the end (R7)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def replica_lab(deployment):
    from lab.change_drills import REGION_R_TOPOLOGY, ChangeDrills
    from lab.deployment import LAB_TOPOLOGY
    if not any(r.replica for r in deployment.topo.regions):
        result = ChangeDrills(deployment).drill_region_added(REGION_R_TOPOLOGY)
        print(result.line())
        assert result.ok, result.line()
    yield deployment
    if any(r.replica for r in deployment.topo.regions):
        print(ChangeDrills(deployment).drill_region_removed(LAB_TOPOLOGY).line())


def test_prometheus_scrapes_the_replicas_and_sees_them_replicate(replica_lab):
    from urllib.parse import quote

    from keystone_multiregion.roles.replica import MAX_LAG_S
    from lab import monitoring
    from lab.layers.proxy import wait
    dep = replica_lab
    replicas = [n.name for n in dep.topo.nodes(role="replica")]
    want = {f"http://{dep.topo.node(n).address}:9104/metrics" for n in replicas}
    assert wait(lambda: want <= {u for u, h in monitoring.targets(dep).items() if h == "up"}, 60, interval=0.5), \
        monitoring.targets(dep)

    def values(expr):
        out = monitoring.api(dep, f"/api/v1/query?query={quote(expr)}") or {}
        return {r["metric"]["node"]: float(r["value"][1]) for r in (out.get("data") or {}).get("result", [])}
    assert wait(lambda: set(values('mysql_slave_status_slave_io_running{job="replica"}')) == set(replicas), 60,
                interval=0.5)
    io = values('mysql_slave_status_slave_io_running{job="replica"}')
    sql = values('mysql_slave_status_slave_sql_running{job="replica"}')
    lag = values('mysql_slave_status_seconds_behind_master{job="replica"}')
    print({"io_running": io, "sql_running": sql, "seconds_behind_master": lag})
    assert io == sql == {n: 1.0 for n in replicas}
    assert set(lag) == set(replicas) and all(v <= MAX_LAG_S for v in lag.values())
    active = [a for a in monitoring.alerts(dep) if a["labels"]["alertname"].startswith("Replica")]
    assert active == []


def test_O5_a_stopped_io_thread_fires_replica_not_replicating(replica_lab):
    from lab import monitoring
    result = monitoring.MonitoringDrills(replica_lab).drill_replica_not_replicating()
    print(result.line())
    assert result.ok, result.line()
