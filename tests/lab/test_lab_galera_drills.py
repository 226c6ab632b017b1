"""The Galera drills of the lab, in order, on one running lab (each prints what it measured)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def drills(deployment):
    from lab.drills import GaleraDrills
    return GaleraDrills(deployment)


def _run(drill):
    result = drill()
    print(result.line())
    assert result.ok, result.line()
    return result


def test_1_cluster_forms(drills):
    result = _run(drills.drill_cluster_forms)
    assert set(result.measured["cluster_size"].values()) == {"3"}


def test_2_row_written_in_a_is_read_everywhere(drills):
    result = _run(drills.drill_replication)
    assert result.measured["read_in"] == {"lab-b": True, "lab-c": True}


def test_3_partitioned_region_refuses_writes_and_serves_reads(drills):
    result = _run(drills.drill_partition)
    assert result.measured["majority_commits"] == 2
    assert result.measured["minority_read"] == "1"
    assert "WSREP has not yet prepared node" in result.measured["minority_write"]


def test_4_heal_rejoins_by_ist(drills):
    result = _run(drills.drill_heal)
    assert result.measured["transfer"] == "IST"
    assert result.measured["rows_caught_up"] == "2/2"


def test_5_kill_and_restart_rejoins_by_ist(drills):
    assert _run(drills.drill_kill_restart).measured["transfer"] == "IST"


def test_6_lock_load_loses_nothing(drills, tmp_path):
    from lab.drills import report
    result = _run(drills.drill_lock_load)
    m = result.measured
    assert m["acknowledged_writes"] > 0 and m["lost_writes"] == 0 and m["divergent_tables"] == []
    assert [e["event"] for e in m["events"]] == ["partition", "heal", "kill", "restart"]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report([result])))
    data = json.loads(path.read_text())
    assert data["passed"] == 1 and data["drills"][0]["measured"]["lost_writes"] == 0


def test_7_full_outage_recovery(drills):
    result = _run(drills.drill_full_outage)
    assert result.measured["lost_writes"] == 0
    assert result.measured["bootstrapped_from"] in result.measured["reports"]


def test_8_wan_latency_costs_commits_not_reads(drills):
    result = _run(drills.drill_wan_latency)
    m = result.measured
    assert m["rtt_ms"] >= 90
    assert m["commit_ms"] - m["commit_ms_without_delay"] >= 90
    # A read that waited for another region would pay at least one round trip.
    assert m["read_ms"] - m["read_ms_without_delay"] < 0.9 * m["rtt_ms"]


def test_g9_bootstrap_node_without_its_volume_refuses(drills):
    result = _run(drills.drill_missing_volume)
    m = result.measured
    assert "refusing to start" in m["said"] and "galera-data" in m["said"]
    assert m["status_without_volume"] == "no server" and m["written_without_volume"] == []
    assert m["grastate_unchanged"] is True and m["lost_writes"] == 0
