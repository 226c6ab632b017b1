"""Backups (issue 14): the topology's backup section, the plan and secrets a Galera node gets,
and galera-node's backup logic that needs no server (agents/galera_backup.py): signed
manifests, which backups a restore takes, binary log positions. The lab runs the rest for real
(tests/lab/test_lab_recovery.py)."""

import datetime
import importlib.util
import json

import pytest

from helpers import example
from keystone_multiregion import pki
from keystone_multiregion.render import AGENTS, render_node
from keystone_multiregion.roles.backup import BACKUP_PLAN, BACKUP_TIMER, target_regions
from keystone_multiregion.topology import TopologyError, load_topology

spec = importlib.util.spec_from_file_location("galera_backup", AGENTS / "galera_backup.py")
gb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gb)

KEY = "k" * 64


def _topo(**backup):
    data = example()
    data["backup"] = {"store": {"auth_url": "https://keystone.infra.example.com:5000/v3",
                                "cidr": "203.0.113.0/24"}, **backup}
    return load_topology(data)


def test_backup_section_defaults_and_containers():
    topo = _topo()
    b = topo.backup
    assert (b.full_interval_h, b.incremental_interval_h, b.keep_days, b.max_age_h) == (24, 1, 14, 2)
    assert b.container("region-b") == "keystone-backups-region-b"
    assert target_regions(topo, "region-c") == ["region-c", "region-a"]  # the next region, wrapping round


@pytest.mark.parametrize("backup, field, fix", [
    ({"store": {"auth_url": "ftp://x", "cidr": "203.0.113.0/24"}}, "backup.store.auth_url", "auth URL"),
    ({"store": {"auth_url": "https://s.example.com/v3", "cidr": "10.10.2.0/25"}}, "backup.store.cidr",
     "object store's own network"),
    ({"store": {"auth_url": "https://s.example.com/v3", "cidr": "203.0.113.0/24"}, "full_interval_h": 1,
      "incremental_interval_h": 2}, "backup.full_interval_h", "at most as often"),
    ({"store": {"auth_url": "https://s.example.com/v3", "cidr": "203.0.113.0/24"}, "container_prefix": "Bad_Name"},
     "backup.container_prefix", "lower-case"),
    ({"store": {"auth_url": "https://s.example.com/v3", "cidr": "203.0.113.0/24", "auth_version": "2"}},
     "backup.store.auth_version", "'3'"),
    ({"store": {"cidr": "203.0.113.0/24"}}, "backup.store.auth_url", "auth URL"),
])
def test_bad_backup_settings_name_the_field_and_the_fix(backup, field, fix):
    data = example()
    data["backup"] = backup
    with pytest.raises(TopologyError) as err:
        load_topology(data)
    assert str(err.value).startswith(f"topology: {field}:") and fix in str(err.value)


def test_every_galera_node_gets_the_plan_and_the_timer_only_the_first_one_backs_up():
    topo = _topo()
    secrets = pki.generate_secrets(topo)
    for node in topo.nodes(role="galera"):
        files = {f.path: f for f in render_node(topo, node.name, secrets).files}
        plan = json.loads(files[BACKUP_PLAN].content)
        assert plan["designated"] is (node.number == 1)
        assert [t["container"] for t in plan["targets"]] == [topo.backup.container(r)
                                                             for r in target_regions(topo, node.region)]
        assert "OnUnitActiveSec=1h" in files[BACKUP_TIMER].content
        cnf = files["/etc/mysql/mariadb.conf.d/99-keystone-multiregion.cnf"].content
        assert "log_slave_updates = ON" in cnf and "wsrep_gtid_mode = ON" in cnf and "server_id = 1" in cnf
        region_index = topo.region(node.region).index
        assert f"gtid_domain_id = {1000 * region_index + node.number}" in cnf


def test_a_signed_manifest_is_refused_when_altered_foreign_or_of_another_deployment():
    m = gb.sign({"format": gb.FORMAT, "deployment": "keystone", "id": "x", "size": 10, "sha256": "ab"}, KEY)
    assert gb.manifest_problem(m, KEY, "keystone") is None
    assert "altered" in gb.manifest_problem({**m, "size": 11}, KEY, "keystone")
    assert "another deployment" in gb.manifest_problem(m, "o" * 64, "keystone")
    other = gb.sign({**m, "deployment": "other"}, KEY)
    assert "belongs to deployment 'other'" in gb.manifest_problem(other, KEY, "keystone")
    assert "not a keystone-multiregion" in gb.manifest_problem({"x": 1}, KEY, "keystone")


def _m(id_, kind, chain, base, finished, gtid, started=None):
    return {"id": id_, "kind": kind, "chain": chain, "base": base, "finished": finished,
            "started": started or finished, "gtid": gtid, "problem": None}


CHAIN = [
    _m("f1", "full", "f1", None, "2026-12-01T00:00:00Z", "1-1-10"),
    _m("i1", "incremental", "f1", "f1", "2026-12-01T01:00:00Z", "1-1-20"),
    _m("i2", "incremental", "f1", "i1", "2026-12-01T02:00:00Z", "1-1-30"),
    _m("f2", "full", "f2", None, "2026-12-02T00:00:00Z", "1-1-40"),
    _m("j1", "incremental", "f2", "f2", "2026-12-02T01:00:00Z", "1-1-50"),
]


def test_a_restore_takes_the_newest_chain_before_the_target():
    t = lambda s: gb.parse_time(s)  # noqa: E731
    assert [m["id"] for m in gb.select_chain(CHAIN)] == ["f2", "j1"]
    assert [m["id"] for m in gb.select_chain(CHAIN, to_time=t("2026-12-01T01:30:00Z"))] == ["f1", "i1"]
    assert [m["id"] for m in gb.select_chain(CHAIN, to_time=t("2026-12-02T00:30:00Z"))] == ["f2"]
    assert gb.select_chain(CHAIN, to_time=t("2026-11-30T00:00:00Z")) is None
    assert [m["id"] for m in gb.select_chain(CHAIN, to_gtid="1-1-31")] == ["f1", "i1", "i2"]
    assert [m["id"] for m in gb.select_chain(CHAIN, to_gtid="1-1-30")] == ["f1", "i1"]  # stops before it
    assert [m["id"] for m in gb.select_chain(CHAIN, backup_id="i1")] == ["f1", "i1"]


def test_a_refused_or_missing_link_ends_the_chain_there():
    broken = [dict(m) for m in CHAIN]
    broken[1]["problem"] = "checksum fails"
    assert [m["id"] for m in gb.select_chain(broken[:3])] == ["f1"]  # i2 builds on the refused i1
    assert [m["id"] for m in gb.select_chain([broken[0], broken[2]])] == ["f1"]


def test_times_gtids_and_positions():
    assert gb.parse_time("2026-12-06T16:30:00Z") == datetime.datetime(2026, 12, 6, 16, 30,
                                                                      tzinfo=datetime.timezone.utc)
    assert gb.parse_time("2026-12-06 16:30:00").tzinfo == datetime.timezone.utc
    with pytest.raises(gb.Refusal, match="not a time"):
        gb.parse_time("yesterday")
    assert gb.gtid_seq("1-1-57,1001-1-3", 1) == 57 and gb.gtid_seq("1001-1-3", 1) == -1
    assert gb.binlog_number("mariadb-bin.000012") == 12


def test_the_binlog_position_comes_from_mariabackups_own_record(tmp_path):
    (tmp_path / "xtrabackup_info").write_text(
        "tool_name = mariabackup\nbinlog_pos = filename 'mariadb-bin.000003', position '1234', "
        "GTID of the last change '1-1-134'\ninnodb_from_lsn = 0\n")
    assert gb.read_binlog_position(str(tmp_path)) == ("mariadb-bin.000003", 1234, "1-1-134")
    (tmp_path / "xtrabackup_info").write_text("tool_name = mariabackup\n")
    assert gb.read_binlog_position(str(tmp_path)) == (None, None, None)


def test_a_full_backup_when_the_binary_logs_started_anew_or_the_chain_is_old(monkeypatch):
    plan = {"full_interval_h": 24}
    fresh = {"chain": {"started": gb.time.time() - 3600, "last_id": "f1"}, "incarnation_files": ["mariadb-bin.000004"]}
    assert gb.choose_kind({}, plan, None, [])[0] == "full"
    assert gb.choose_kind(fresh, plan, None, ["mariadb-bin.000004", "mariadb-bin.000005"]) == \
        ("incremental", "on top of f1")
    assert gb.choose_kind(fresh, plan, None, ["mariadb-bin.000001"])[0] == "full"  # new volume or SST
    old = {**fresh, "chain": {**fresh["chain"], "started": gb.time.time() - 25 * 3600}}
    assert gb.choose_kind(old, plan, None, ["mariadb-bin.000004"])[0] == "full"
    assert gb.choose_kind(old, plan, "incremental", ["mariadb-bin.000004"])[0] == "incremental"


def test_store_credentials_travel_in_the_environment_only():
    env = gb.swift_env({"auth_version": "3", "auth_url": "https://k/v3"},
                       {"store": {"application_credential_id": "id1", "application_credential_secret": "s1"}},
                       "region-b")
    assert env["OS_APPLICATION_CREDENTIAL_SECRET"] == "s1" and env["OS_REGION_NAME"] == "region-b"
    assert env["OS_AUTH_TYPE"] == "v3applicationcredential"
    env = gb.swift_env({"auth_version": "1", "auth_url": "http://s/auth/v1.0"}, {"store": {"user": "a:b", "key": "k"}})
    assert (env["ST_AUTH"], env["ST_USER"], env["ST_KEY"]) == ("http://s/auth/v1.0", "a:b", "k")


def test_encryption_round_trip_and_wrong_key(tmp_path):
    src = tmp_path / "plain"
    src.write_bytes(b"keystone data " * 1000)
    enc, out, log = tmp_path / "enc", tmp_path / "out", str(tmp_path / "log")
    gb.encrypt_file(str(src), str(enc), KEY, log)
    assert b"keystone data" not in enc.read_bytes()
    gb.decrypt_to(str(enc), str(out), KEY, log)
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(RuntimeError):
        gb.decrypt_to(str(enc), str(out), "w" * 64, log)


class FakeStore:
    """A container in memory: what prune reads and deletes."""

    def __init__(self, objects):
        self.objects = dict(objects)
        self.container = "c"

    def get_all_json(self, prefix, workdir):
        return {k: v for k, v in self.objects.items() if k.startswith(prefix)}

    def delete(self, name):
        del self.objects[name]


def test_prune_deletes_old_chains_and_the_binary_logs_before_the_oldest_kept_one():
    old = (gb.now() - datetime.timedelta(days=20)).strftime("%Y-%m-%dT%H:%M:%SZ")
    mid = (gb.now() - datetime.timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    new = (gb.now() - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    def backup(id_, kind, chain, t):
        return gb.sign({"format": gb.FORMAT, "deployment": "keystone", "id": id_, "kind": kind, "chain": chain,
                        "started": t, "finished": t}, KEY)

    def binlog(name, t):
        return gb.sign({"format": gb.FORMAT, "deployment": "keystone", "kind": "binlog", "file": name,
                        "shipped": t}, KEY)
    objects = {
        "keystone/manifests/f-old.json": backup("f-old", "full", "f-old", old), "keystone/data/f-old": b"",
        "keystone/manifests/i-old.json": backup("i-old", "incremental", "f-old", old), "keystone/data/i-old": b"",
        "keystone/manifests/f-mid.json": backup("f-mid", "full", "f-mid", mid), "keystone/data/f-mid": b"",
        "keystone/manifests/f-new.json": backup("f-new", "full", "f-new", new), "keystone/data/f-new": b"",
        "keystone/binlog-manifests/n/i/b.1.json": binlog("b.1", old), "keystone/binlogs/n/i/b.1": b"",
        "keystone/binlog-manifests/n/i/b.2.json": binlog("b.2", mid), "keystone/binlogs/n/i/b.2": b"",
    }
    store = FakeStore(objects)
    plan = {"deployment": "keystone"}
    removed = gb._prune_store("region-a", store, plan, {"key": KEY}, "/nonexistent", keep_s=14 * 86400)
    assert sorted(r for _, r in removed) == ["binlog n/i/b.1", "f-old", "i-old"]
    assert sorted(store.objects) == ["keystone/binlog-manifests/n/i/b.2.json", "keystone/binlogs/n/i/b.2",
                                     "keystone/data/f-mid", "keystone/data/f-new",
                                     "keystone/manifests/f-mid.json", "keystone/manifests/f-new.json"]
    # The newest chain is never deleted, however old.
    alone = FakeStore({"keystone/manifests/f-old.json": backup("f-old", "full", "f-old", old)})
    assert gb._prune_store("region-a", alone, plan, {"key": KEY}, "/nonexistent", keep_s=86400) == []
