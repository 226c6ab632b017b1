"""Backups and restores in the lab (issue 14): drills B1-B4 on the session's deployment, whose
Galera nodes back up into the lab's real Swift (lab/objectstore.py).

This module runs last among the lab tests (file order): B2 and B3 replace the whole cluster
with one restored from a backup, which later tests would otherwise inherit.
"""
from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def drills(deployment):
    from lab.backup_drills import BackupDrills
    return BackupDrills(deployment)


def _ok(result):
    assert result.ok, result.line()
    return result.measured


def test_b1_backup_under_load(drills):
    m = _ok(drills.drill_backup_under_load())
    load = m["load"]
    assert load["validations"] > 0 and load["failed_validations"] == 0 and load["lost_writes"] == 0
    assert m["kind"] == "full" and m["size"] > 0
    assert {region for region, check in m["verified"]} == {"lab-a", "lab-b"}
    assert {check for _, check in m["verified"]} == {"data ok"}
    print(json.dumps({k: m[k] for k in ("backup_s", "desync_s", "longest_write_s", "longest_ack_gap_s",
                                        "flow_control")}))


def test_the_backup_nodes_report_their_last_good_backup_to_prometheus(drills, deployment):
    """After B1, lab-a's backup node says through node_exporter when its last good backup
    finished; the lab's Prometheus has it (the metrics timer runs every 10 s, scrapes every 1 s)."""
    import time

    from lab import monitoring
    from lab.drills import wait_until
    name = drills.backup_node("lab-a")
    seen = {}

    def reported():
        got = monitoring.api(deployment, "/api/v1/query?query=keystone_multiregion_backup_last_run_ok")
        for r in (got or {}).get("data", {}).get("result", []):
            seen[r["metric"].get("node")] = r["value"][1]
        return seen.get(name) == "1"
    assert wait_until(reported, monitoring.WAIT_LIMIT_S, interval=1.0), seen
    from urllib.parse import quote
    got = monitoring.api(deployment, "/api/v1/query?query="
                         + quote("time() - keystone_multiregion_backup_last_success_timestamp_seconds"))
    ages = {r["metric"].get("node"): float(r["value"][1]) for r in (got or {}).get("data", {}).get("result", [])}
    assert 0 <= ages[name] < time.time()  # a real timestamp, not the "never" of 0
    print(json.dumps({"last_success_age_s": round(ages[name], 1)}))


def test_scheduled_backup_runs_only_on_the_backup_node(drills, deployment):
    """The timer's unit on a Galera node that is not its region's backup node does nothing."""
    from keystone_multiregion.roles.backup import BACKUP_SERVICE
    from lab import service
    # The lab has one Galera node per region: each is its region's backup node. The plan file
    # says so; a node told it is not one leaves without a backup (exit 0, one line).
    name = drills.backup_node("lab-c")
    plan_path = deployment.lab.procs.host_path(name, "/etc/keystone-multiregion/backup.json")
    original = open(plan_path).read()
    try:
        with open(plan_path, "w") as fh:
            fh.write(json.dumps({**json.loads(original), "designated": False}))
        argv = service.exec_lines(deployment.lab.procs.host_path(name, BACKUP_SERVICE), "ExecStart")[0]
        out = deployment.lab.procs.run(name, argv, check=False, timeout=120)
        assert out.returncode == 0 and "is not lab-c's backup node" in out.stdout
    finally:
        with open(plan_path, "w") as fh:
            fh.write(original)


def test_b4_altered_truncated_and_foreign_backups_refused(drills):
    m = _ok(drills.drill_refused_backups())
    assert all(r["exit"] == 2 for r in m["refusals"].values())
    assert m["good_copy"]["exit"] == 0
    print(json.dumps({"verify": m["verify"], "refusals": m["refusals"]}))


def test_restore_refused_while_the_cluster_runs(drills):
    name = drills.backup_node("lab-a")
    out = drills.galera_node(name, "restore", "--to", "2026-01-01T00:00:00Z")
    assert out.returncode == 2 and "MariaDB runs on this node" in out.stderr
    # A member whose own server is stopped still may not restore while the others run.
    other = drills.backup_node("lab-c")
    drills.dep.lab.procs.stop(other, "mariadb", timeout=180)
    try:
        out = drills.galera_node(other, "restore", "--to", "2026-01-01T00:00:00Z")
        assert out.returncode == 2 and "still run a Primary component" in out.stderr, out.stderr
    finally:
        drills.dep.start_galera(other)


def test_b2_point_in_time_restore_undoes_a_mistake(drills):
    m = _ok(drills.drill_point_in_time())
    assert m["mistake_everywhere"] is True
    for region, state in m["after"].items():
        assert state["project"] == 200 and set(state["users"]) == {200} and state["assignments"] == 2
        assert set(state["logins"]) == {201}
    assert m["missing_before_mistake"] == []
    assert m["tampered_copy"]["exit"] == 2
    assert m["to_gtid_dry_run"]["exit"] == 0 and m["to_gtid_dry_run"]["stop_before"]["position"] > 0
    assert m["unknown_gtid"]["exit"] == 2
    print(json.dumps({k: m[k] for k in ("mistake_at", "restore_s", "rejoin_s", "serving_again_s",
                                        "acked_before_mistake", "after_target_kept", "tampered_copy",
                                        "to_gtid_dry_run", "unknown_gtid")}))


def test_b3_total_loss_rebuilt_from_backups(drills):
    m = _ok(drills.drill_total_loss())
    assert m["shipped_writes_present"] == "10/10"
    print(json.dumps({k: m[k] for k in ("restore_s", "rejoin_s", "rto_s", "rpo")}))
