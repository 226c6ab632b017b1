"""A replica region in the lab (#15): lab-r (lab/topology-region-r.yaml), added to the
session's running lab under load as an operator adds one (the core's stacks first, then the
replica region's; drill R0), whose Keystone reads from two asynchronous replicas and whose
proxies send writes to the core. The replica drills R1-R6 (lab/replica_drills.py) in order;
the day-2 pieces: the replicas' mysqld_exporter scraped by the lab's Prometheus, drill O5 (a
stopped IO thread fires ReplicaNotReplicating for that replica only), node-agent's
replica:restart (refused while the region's other replica does not replicate, else the
replica restarted and replicating before the push answers); then lab-r removed again under
load (R7)."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def replica_lab(deployment):
    """The session's lab with lab-r added (R0); removed again by the last test (R7), or here
    if that test did not run, so the session's lab ends as it began."""
    from lab.change_drills import REGION_R_TOPOLOGY, ChangeDrills
    from lab.deployment import LAB_TOPOLOGY
    result = ChangeDrills(deployment).drill_region_added(REGION_R_TOPOLOGY)
    print(result.line())
    assert result.ok, result.line()
    yield deployment
    if any(r.replica for r in deployment.topo.regions):
        print(ChangeDrills(deployment).drill_region_removed(LAB_TOPOLOGY).line())


@pytest.fixture(scope="module")
def drills(replica_lab):
    from lab.replica_drills import ReplicaDrills
    return ReplicaDrills(replica_lab)


def test_the_replica_region_is_up_and_every_check_passes(replica_lab):
    checks = replica_lab.checks()
    for c in checks:
        print(("ok  " if c.ok else "FAIL") + f" {c.name}: {c.detail}")
    failed = [c for c in checks if not c.ok]
    assert not failed, [f"{c.name}: {c.detail}" for c in failed]


def _slave_status(dep, name: str) -> dict:
    out = dep.lab.procs.run(name, ["mariadb", "--protocol=socket", "-S", "/run/mysqld/mysqld.sock", "-u", "root",
                                   "-E"], input="SHOW SLAVE STATUS", check=False)
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.stdout.splitlines()) if _}


def test_seed_and_filter_facts(replica_lab, drills):
    """What seeding and filtering do on a Galera source: the dump's GTID (wsrep_gtid_mode), the
    core's accounts not replicated (replicate_wild_do_table), the cluster's domain only."""
    from lab.drills import wait_until
    dep = replica_lab
    core = dep.topo.nodes("lab-c", "galera")[0].name
    # An account made on the core after the replicas replicate: CREATE USER is binary-logged
    # with the cluster's GTID, and must not reach (or stop) a replica.
    dep.sql(core, "CREATE USER IF NOT EXISTS 'zz_filter_probe'@'10.255.255.1' IDENTIFIED BY 'x'; "
                  "GRANT SELECT ON keystone.* TO 'zz_filter_probe'@'10.255.255.1'")
    caught = wait_until(drills._replicas_caught_up, timeout=60, interval=0.5)
    core_tables = dep.sql(core, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'keystone'"
                          ).stdout.strip()
    facts = {}
    for name in drills.replicas:
        marker = dep.lab.procs.host_path(name, "/var/lib/mysql/keystone-multiregion-replica.json")
        with open(marker) as fh:
            seed = json.load(fh)
        ss = _slave_status(dep, name)
        facts[name] = {
            "seed": seed, "status": drills.replica_status()[name],
            "accounts": sorted(dep.sql(name, "SELECT CONCAT(user, '@', host) FROM mysql.user").stdout.split()),
            "do_domain_ids": ss.get("Replicate_Do_Domain_Ids"), "wild_do_table": ss.get("Replicate_Wild_Do_Table"),
            "gtid_slave_pos": dep.sql(name, "SELECT @@gtid_slave_pos").stdout.strip(),
            "tables": dep.sql(name, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'keystone'"
                              ).stdout.strip()}
    print(json.dumps({"core": core, "core_gtid_binlog_pos": dep.sql(core, "SELECT @@gtid_binlog_pos").stdout.strip(),
                      "caught_up": bool(caught), "replicas": facts}, indent=1))
    dep.sql(core, "DROP USER IF EXISTS 'zz_filter_probe'@'10.255.255.1'")
    assert caught
    for name, f in facts.items():
        assert f["status"].get("healthy"), f
        assert f["seed"]["gtid"].startswith("1-"), f["seed"]
        assert f["tables"] == core_tables, (name, f["tables"], core_tables)
        assert not [a for a in f["accounts"] if a.startswith(("zz_filter_probe@", "replication@"))], f["accounts"]
        assert f["do_domain_ids"] == "1" and f["wild_do_table"] == "keystone.%", f
        assert all(part.startswith("1-") for part in f["gtid_slave_pos"].split(",")), f["gtid_slave_pos"]


def test_R1_local_validation_and_a_core_user_seen(drills):
    result = drills.drill_local_validation()
    print(result.line())
    assert result.ok, result.line()


def test_R2_a_write_through_the_replica_region_lands_in_the_core(drills):
    result = drills.drill_write_through_replica_region()
    print(result.line())
    assert result.ok, result.line()


def test_R2_keystone_operations_in_the_replica_region(drills):
    """Each operation made through lab-r's endpoint: none fails; those the replica refused are
    the ones the wrapper sent to the core (before the wrapper's fix, each was a 500)."""
    ops = drills.operations()
    for label, got in ops.items():
        print(f"{label}: {got}")
    expected = {"token issue, good password": 201, "token issue, wrong password": 401,
                "token issue, good password after a wrong one": 201, "token issue, good password again": 201,
                "credential create (TOTP)": 201, "token issue, password + TOTP": 201,
                "application credential create": 201, "token issue, application credential": 201,
                "user create": 201, "project create": 201, "role assignment": 204, "password change": 204,
                "token revoke": 204}
    got = {label: v["status"] for label, v in ops.items()}
    assert got == expected


def test_R3_the_source_dies_and_the_replica_switches(drills):
    result = drills.drill_source_dies()
    print(result.line())
    assert result.ok, result.line()


def test_R4_cut_off_validates_refuses_writes_and_catches_up(drills):
    result = drills.drill_cut_off()
    print(result.line())
    assert result.ok, result.line()


def test_R5_commit_latency_in_the_core(drills):
    result = drills.drill_commit_latency()
    print(result.line())
    assert result.ok, result.line()


def test_R6_revocation_bound(drills):
    result = drills.drill_revocation_bound()
    print(result.line())
    assert result.ok, result.line()


# -- day 2: monitoring of the replicas, and node-agent's replica:restart -------------------

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


def test_R7_the_replica_region_is_removed_under_load(replica_lab):
    from lab.change_drills import ChangeDrills
    from lab.deployment import LAB_TOPOLOGY
    result = ChangeDrills(replica_lab).drill_region_removed(LAB_TOPOLOGY)
    print(result.line())
    assert result.ok, result.line()
    assert not [h for h, v in replica_lab.lab.net.hosts().items() if v["region"] == "lab-r"]
