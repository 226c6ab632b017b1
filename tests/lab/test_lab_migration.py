"""Drill B5 on the session's lab: an existing single-region Keystone moved in (issue #14,
item 7). The drill restores the lab's own database and keys afterwards, so the modules that
run later find the lab as it was; the last test checks that."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def moved(deployment):
    from lab.migration_drills import drill_move_in
    result = drill_move_in(deployment)
    print(result.line())
    return result


def test_b5_existing_keystone_moved_in(moved, deployment):
    m = moved.measured
    assert moved.ok, moved.line()
    regions = [r.name for r in deployment.topo.regions if deployment.topo.nodes(r.name, "keystone")]
    assert m["standalone_totp_login"] == 201
    assert m["old_token"] == {r: 200 for r in regions}
    assert m["totp_login"] == {r: 201 for r in regions}
    assert m["inventory_equal"] == {r: True for r in regions}
    # Users: admin, 6 of the standalone's, its TOTP user; projects: admin, 3; every member assignment.
    assert m["source"]["users"] == 8 and m["source"]["projects"] == 4 and m["source"]["assignments"] >= 8
    imported = m["import_db"]["imported"]
    assert imported["users"] == 8 and imported["projects"] == 4 and imported["credentials"] == 1
    assert m["import_db"]["converted"] == 1 and "alembic_version: ENGINE=MyISAM converted" in m["import_db_notes"]
    print(json.dumps({k: m[k] for k in ("standalone_up_s", "populate_s", "dump_bytes", "move_s", "catalog_s",
                                        "checks_s", "restore_s", "lab_dump_s")}))
    print(json.dumps({k: m["import_db"][k] for k in ("load_s", "db_sync_s", "seconds", "tables", "statements")}))


def test_the_lab_is_as_it_was_after_the_drill(moved, deployment):
    from lab.keystone_drills import KeystoneDrills
    assert moved.measured.get("restore_s") is not None
    kd = KeystoneDrills(deployment)
    for region in kd.regions:
        token = kd.admin_token(region)  # the lab's admin, with the lab's password
        assert kd.validate(region, token, token).get("status") == 200
    assert [c.line() for c in deployment.checks() if not c.ok] == []
    assert "legacy" not in deployment.lab.net.hosts()
