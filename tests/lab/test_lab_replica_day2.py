"""A replica region's day-2 pieces in the lab (#15): lab-r (lab/topology-region-r.yaml) added to
the session's running lab (drill R0, as tests/lab/test_lab_replica.py adds it; not again when
it is there already), then

- monitoring: the replicas' mysqld_exporter scraped by the lab's Prometheus from the
  monitoring network, what the replica alerts read, and drill O5 (a stopped IO thread fires
  ReplicaNotReplicating for that replica only, cleared once it replicates again);
- node-agent's replica:restart: a pushed replica.cnf refused while the region's other replica
  does not replicate (nothing changed), then restarting the replica when it does, which
  replicates again before the push answers;

and lab-r removed again at the end (R7)."""

from __future__ import annotations

import json
import time

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


def _with_probe_comment(dep, name: str, comment: str | None) -> dict:
    """The stack's push of `name` with a comment added to replica.cnf (None: as rendered)."""
    from keystone_multiregion import push
    from keystone_multiregion.render import render_node
    from keystone_multiregion.roles.galera import GALERA_CONF
    data = push.payload(dep.topo, render_node(dep.topo, name, dep.secrets()))
    for f in data["files"]:
        if f["path"] == GALERA_CONF and comment:
            f["content"] += f"# {comment}\n"
    return data


def _wait_status(dep, name: str, healthy: bool) -> dict:
    from lab.layers import replica as replica_layer
    from lab.layers.proxy import wait
    wait(lambda: bool(replica_layer.status(dep, name).get("healthy")) == healthy, 60, interval=0.5)
    return replica_layer.status(dep, name)


def test_a_replica_restart_is_refused_while_the_other_replica_does_not_replicate(replica_lab):
    from keystone_multiregion.roles.galera import GALERA_CONF
    dep = replica_lab
    one, two = (n.name for n in dep.topo.nodes(role="replica"))
    before = open(dep.lab.procs.host_path(one, GALERA_CONF)).read()
    pid = dep.lab.procs.pid(one, "mariadb")
    dep.sql(two, "STOP SLAVE IO_THREAD")
    try:
        assert _wait_status(dep, two, healthy=False).get("healthy") is False
        out = dep.push_files(one, _with_probe_comment(dep, one, "day-2 push probe (refused)"))
        print(out.returncode, out.stderr.strip()[-600:])
        assert out.returncode == 2
        assert "refusing to restart MariaDB on this replica: no other replica of the region is healthy" in out.stderr
        assert two in out.stderr and "HTTP 503" in out.stderr
        assert open(dep.lab.procs.host_path(one, GALERA_CONF)).read() == before
        assert dep.lab.procs.pid(one, "mariadb") == pid
        assert _wait_status(dep, one, healthy=True).get("healthy") is True
    finally:
        dep.sql(two, "START SLAVE IO_THREAD")
    assert _wait_status(dep, two, healthy=True).get("healthy") is True


def test_a_pushed_replica_cnf_restarts_the_replica_which_replicates_before_the_push_answers(replica_lab):
    from lab.layers import replica as replica_layer
    dep = replica_lab
    one, two = (n.name for n in dep.topo.nodes(role="replica"))
    assert _wait_status(dep, two, healthy=True).get("healthy") is True
    pid = dep.lab.procs.pid(one, "mariadb")
    t = time.monotonic()
    out = dep.push_files(one, _with_probe_comment(dep, one, "day-2 push probe"))
    took = round(time.monotonic() - t, 1)
    status = replica_layer.status(dep, one)
    try:
        print(json.dumps({"push_s": took, "stderr": out.stderr.strip()[-400:], "status_after": status}))
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1])["actions"] == ["replica:restart"]
        assert dep.lab.procs.pid(one, "mariadb") != pid  # restarted
        assert status.get("healthy") is True  # replicating when the push answered
        assert replica_layer.status(dep, two).get("healthy") is True  # the other one served meanwhile
    finally:  # the file as rendered again (a second guarded restart)
        back = dep.push_files(one, _with_probe_comment(dep, one, None))
    assert back.returncode == 0, back.stderr
