"""Changing the running lab as `pulumi up` changes a deployment (drills D1-D7): every push
through node-agent over SSH, one node after the other, under continuous load."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def changes(deployment):
    from lab.change_drills import ChangeDrills
    return ChangeDrills(deployment)


def _run(drill):
    result = drill()
    print(result.line())
    assert result.ok, result.line()
    return result.measured


def _catalog(dep, cloud):
    """(region, interface, url) of every endpoint, and the regions, as python-openstackclient
    lists them through `cloud` from the lab's user namespace."""
    import json

    from lab import catalog
    listed = []
    for args in (["endpoint", "list"], ["region", "list"]):
        out = catalog.openstack(dep, [*args, "-f", "json"], cloud=cloud)
        assert out.returncode == 0, out.stderr[-500:]
        listed.append(json.loads(out.stdout))
    return (sorted((e["Region"], e["Interface"], e["URL"]) for e in listed[0]), sorted(r["Region"] for r in listed[1]))


def _catalog_entries(dep, regions):
    from keystone_multiregion.roles.keystone import catalog_entries
    return (sorted((e["region"], e["interface"], e["url"]) for r in regions
                   for e in catalog_entries(dep.topo, r)["endpoints"]), sorted(regions))


def _no_harm(m):
    """No validation failed, no acknowledged write lost (failed writes are reported: the
    client saw them fail)."""
    load = m["load"]
    assert load["validations"] > 0 and load["acknowledged_writes"] > 0
    assert (load["failed_validations"], load["lost_writes"]) == (0, 0)


def test_every_node_holds_its_pushed_files(deployment):
    checks = deployment.drift_checks()
    assert len(checks) == len(deployment.topo.nodes())
    assert [c.line() for c in checks if not c.ok] == []


def test_d1_haproxy_change_pushed_to_both_proxies_under_load(changes):
    m = _run(changes.drill_haproxy_push)
    _no_harm(m)
    assert [p["actions"] for p in m["pushes"].values()] == [["haproxy:reload"], ["haproxy:reload"]]


def test_d2_galera_restart_setting_rolled_over_every_node_under_load(changes):
    m = _run(changes.drill_galera_restart_setting)
    _no_harm(m)
    assert all(p["actions"] == ["galera:settings (restart)"] for p in m["pushes"].values())


def test_d7_keystone_database_sessions_killed_under_load(changes):
    """Keystone's sessions killed at every Galera node again and again: before the wrapper
    answered a lost validation again, this saw 4 of 7007 and 6 of 8005 validations fail
    (Keystone's own 500)."""
    m = _run(lambda: changes.drill_db_sessions_cut(rounds=10))
    _no_harm(m)
    assert m["sessions_killed"] > 0


def test_d6_push_that_would_cost_quorum_is_refused(changes):
    m = _run(changes.drill_quorum_refusal)
    assert m["exit"] == 2 and m["file_unchanged"] and m["process_unchanged"]


def test_d5_node_certificate_renewed_and_pushed_under_load(changes):
    m = _run(changes.drill_certificate_renewal)
    _no_harm(m)
    assert m["push"]["actions"] == ["galera:restart"] and m["after"] != m["before"]


def test_d3_region_added_live_under_load(changes):
    """A fourth region (Galera weight 2) added in the documented order: the three regions
    pushed first, then lab-d created and joined by SST; every vote counted, tokens cross
    both ways, a user created through lab-d logs in in every region."""
    m = _run(changes.drill_region_added)
    _no_harm(m)
    assert [s["step"] for s in m["steps"]] == ["pulumi up lab-a", "pulumi up lab-b", "pulumi up lab-c",
                                               "pulumi up lab-d"]
    assert m["steps"][-1]["members"] == ["galera-lab-d-1"] and m["steps"][-1]["votes"] == [5]
    assert m["cluster_votes"] == 5
    assert (m["token_from_lab-d_in_lab-a"], m["token_from_lab-a_in_lab-d"]) == (200, 200)
    assert m["user_from_new_region_logs_in"] == {"lab-a": 201, "lab-b": 201, "lab-c": 201, "lab-d": 201}
    # lab-d's stack registered its catalog entries; a client pinned to lab-d finds them.
    assert _catalog(changes.dep, "lab-d") == _catalog_entries(changes.dep, ["lab-a", "lab-b", "lab-c", "lab-d"])


def test_d4_region_removed_live_under_load(changes):
    """lab-d removed again: its member leaves first (pulumi destroy), then the three regions
    are pushed without it; three votes again, no trace of lab-d in grants or backends."""
    m = _run(changes.drill_region_removed)
    _no_harm(m)
    assert [s["step"] for s in m["steps"]] == ["pulumi destroy lab-d", "pulumi up lab-a", "pulumi up lab-b",
                                               "pulumi up lab-c"]
    assert m["steps"][0]["votes"] == [3] and m["cluster_votes"] == 3
    assert not [h for h in m["keystone_db_hosts"] if h.startswith("10.91.4.")]
    # Its catalog entries went with it (before its nodes, as `pulumi destroy` deletes them).
    assert _catalog(changes.dep, "lab-a") == _catalog_entries(changes.dep, ["lab-a", "lab-b", "lab-c"])
