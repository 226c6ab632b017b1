"""The Keystone drills of the lab, on the session's lab (each prints what it measured)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def kdrills(deployment):
    from lab.keystone_drills import KeystoneDrills
    return KeystoneDrills(deployment)


def _run(drill):
    result = drill()
    print(result.line())
    assert result.ok, result.line()
    return result


def test_k1_one_identity_across_regions(kdrills):
    result = _run(kdrills.drill_one_identity)
    assert result.measured["seen_in_lab-c"] == (1, 1)


def test_k2_cut_region_validates_and_refuses_writes_clearly(kdrills, deployment):
    from lab.drills import GaleraDrills
    result = _run(lambda: kdrills.drill_partition(GaleraDrills(deployment)))
    m = result.measured
    assert m["validate_cached"] == 200 and m["validate_uncached"]["status"] == 200
    assert m["create_project_in_partition"]["status"] == 503
    assert m["after_heal_sees_majority_project"] == 1


def test_k3_totp_multi_factor(kdrills):
    m = _run(kdrills.drill_mfa).measured
    assert (m["password_alone"], m["password_and_totp"], m["wrong_code"]) == (401, 201, 401)


def test_k4_dead_memcached_costs_latency_not_answers(kdrills):
    m = _run(kdrills.drill_memcached_down).measured
    assert m["failed"] == 0 and m["issue_without_memcached"] == 201


def test_k5_revocation_within_the_bound(kdrills, deployment):
    m = _run(kdrills.drill_revocation).measured
    # Refused in the end (the drill fails otherwise); how long, against the bound, is printed.
    assert m["accepted_in_other_region_for_s"] is not None and m["checks"] >= 1
    print(f"K5: accepted for {m['accepted_in_other_region_for_s']} s, bound "
          f"{deployment.topo.keystone.token_cache_s} s, within: {m['within_bound']}")


def test_k6_rotation_region_by_region(kdrills):
    m = _run(kdrills.drill_rotation).measured
    assert m["new_primary_was_staged"] is True and m["rotated_regions"] == 3


def test_k7_skipped_rotation_refused_drift_reported_and_repaired(kdrills, deployment):
    m = _run(kdrills.drill_key_safety).measured
    assert m["skipped_rotation_exit"] == 2
    assert (m["key_check_exit_after_tamper"], m["key_check_exit_after_push"]) == (1, 0)
    assert m["validation_after_repair"] == 200
    # After the drill the lab is whole again: every check passes.
    assert [c.line() for c in deployment.checks() if not c.ok] == []


def test_k8_push_only_to_the_pinned_node_from_the_admin_network(kdrills):
    m = _run(kdrills.drill_push_path).measured
    assert m["wrong_host_key"]["exit"] == 255 and m["from_outside_admin_cidr"]["exit"] == 255
    assert m["from_admin_network"]["exit"] == 0


def test_k9_credential_rotation_keeps_totp_users_logging_in(kdrills, deployment):
    m = _run(kdrills.drill_credential_rotation).measured
    assert m["rotation_2_before_migrate_exit"] == 2
    assert set(m["mfa_after_rotation_2_caches_flushed"].values()) == {201}
    assert [c.line() for c in deployment.checks() if not c.ok] == []


def test_drills_run_again_continue_from_the_keys_the_nodes_hold(deployment):
    """`./run lab drill` twice on one lab: a new drill runner starts from the rotated keys the
    last run left on the nodes (recorded next to the lab's secrets), not from the initial ones."""
    from lab.keystone_drills import KeystoneDrills
    again = KeystoneDrills(deployment)
    _run(again.drill_rotation)
    _run(again.drill_credential_rotation)
    assert [c.line() for c in deployment.checks() if not c.ok] == []


def test_k10_authorization_changes_reach_every_region_within_the_bound(kdrills, deployment):
    m = _run(kdrills.drill_stale_permissions).measured
    bound = deployment.topo.keystone.token_cache_s
    for change in ("role removed", "user disabled", "project disabled"):
        for region in ("lab-b", "lab-c"):
            # Stopped working in the end (reported against the bound, not judged on it).
            row = m[change][region]
            assert row["old_permission_worked_for_s"] is not None, (change, region, row)
            print(f"K10 {change} in {region}: worked for {row['old_permission_worked_for_s']} s, bound {bound} s, "
                  f"within: {row['within_bound']}")


def test_bootstrap_once_a_rebuilt_node_never_resets_admin(kdrills, deployment):
    """The bootstrap node's password file is gone after the first bootstrap (the lab empties
    its bind-mounted file); the database holds the marker; and a bootstrap run again with the
    password file back (as a rebuilt node's cloud-init writes it) leaves a changed admin
    password alone."""
    import os
    from keystone_multiregion.roles.keystone import ADMIN_PASSWORD_FILE, KEYSTONE_NODE_TOOL
    node = deployment.topo.nodes(deployment.topo.bootstrap_region, "keystone")[0].name
    region = deployment.topo.bootstrap_region
    procs = deployment.lab.procs
    host_file = procs.host_path(node, ADMIN_PASSWORD_FILE)
    assert open(host_file).read() == ""  # removed after the first bootstrap
    original = kdrills.password
    admin = kdrills.admin_token(region)
    me = kdrills.call(region, "GET", admin, "/v3/users?name=admin")["body"]["users"][0]["id"]
    changed = "changed-" + os.urandom(6).hex()
    out = kdrills.call(region, "POST", admin, f"/v3/users/{me}/password",
                       {"user": {"original_password": original, "password": changed}}, secret=True)
    assert out["status"] == 204, out
    try:
        with open(host_file, "w") as fh:  # a rebuilt node: cloud-init writes the file again
            fh.write(original + "\n")
        again = procs.run(node, ["python3", KEYSTONE_NODE_TOOL, "bootstrap", "--timeout", "120"], timeout=180)
        print(again.stdout.strip())
        assert '"bootstrap": "done before"' in again.stdout
        assert open(host_file).read() == ""
        url = kdrills.url(region)
        assert kdrills.ks(region, "token", url, "admin", changed, "admin")["status"] == 201
        assert kdrills.ks(region, "token", url, "admin", original, "admin")["status"] == 401  # not reset
    finally:
        token = kdrills.ks(region, "token", kdrills.url(region), "admin", changed, "admin").get("token")
        if token:
            kdrills.call(region, "POST", token, f"/v3/users/{me}/password",
                         {"user": {"original_password": changed, "password": original}}, secret=True)
    assert kdrills.ks(region, "token", kdrills.url(region), "admin", original, "admin")["status"] == 201
