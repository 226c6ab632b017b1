"""agents/replica-node.py against fake `mariadb` and `mariadb-dump` clients: GTID arithmetic,
the seed, the switch and its refusals, the watch's decision, the health answer. Passwords
never in argv (`ps` shows it to every user)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

AGENTS = Path(__file__).resolve().parent.parent / "agents"


def _agent():
    spec = importlib.util.spec_from_file_location("replica_node", AGENTS / "replica-node.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A fake server side: the local replica answers over the socket, each source by its address
# (from the option file's host line). State in $FAKE_STATE (JSON); every call logged.
FAKE_MARIADB = r"""#!/usr/bin/env python3
import json, os, sys
state = json.load(open(os.environ["FAKE_STATE"]))
argv = sys.argv[1:]
sql = sys.stdin.read() if not sys.stdin.isatty() else ""
host = None
for a in argv:
    if a.startswith("--defaults-file="):
        for line in open(a.split("=", 1)[1]):
            if line.startswith("host = "):
                host = line.split("= ", 1)[1].strip()
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({"prog": os.path.basename(sys.argv[0]), "argv": argv, "sql": sql, "host": host}) + "\n")
if os.path.basename(sys.argv[0]) == "mariadb-dump":
    src = state["sources"][host]
    print("-- MariaDB dump")
    print(f"-- SET GLOBAL gtid_slave_pos='{src['gtid_binlog_pos']}';")
    print("CREATE DATABASE keystone;")
    sys.exit(0)
if host is not None:
    src = state["sources"].get(host)
    if src is None or src.get("down"):
        print(f"ERROR 2002 (HY000): Can't connect to server on '{host}' (115)", file=sys.stderr)
        sys.exit(1)
    print(src["gtid_binlog_pos"])
    sys.exit(0)
if "SHOW SLAVE STATUS" in sql:
    s = state.get("slave")
    if s:
        print("*************************** 1. row ***************************")
        for k, v in s.items():
            print(f"{k:>30}: {v}")
    sys.exit(0)
if "gtid_slave_pos" in sql and sql.strip().upper().startswith("SELECT"):
    print(state["gtid_slave_pos"])
sys.exit(0)
"""


@pytest.fixture
def agent(tmp_path, monkeypatch):
    rn = _agent()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for prog in ("mariadb", "mariadb-dump"):
        (bin_dir / prog).write_text(FAKE_MARIADB)
        (bin_dir / prog).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    state = {"sources": {"10.9.1.42": {"gtid_binlog_pos": "1-1-40,1001-1-3"},
                         "10.9.2.42": {"gtid_binlog_pos": "1-1-40"},
                         "10.9.3.42": {"gtid_binlog_pos": "1-1-38"}},
             "gtid_slave_pos": "1-1-40",
             "slave": {"Master_Host": "10.9.1.42", "Slave_IO_Running": "Connecting", "Slave_SQL_Running": "Yes",
                       "Seconds_Behind_Master": "NULL", "Gtid_IO_Pos": "1-1-40", "Gtid_Slave_Pos": "1-1-40",
                       "Last_IO_Error": "error reconnecting to master"}}
    state_file, log = tmp_path / "state.json", tmp_path / "calls.log"
    state_file.write_text(json.dumps(state))
    monkeypatch.setenv("FAKE_STATE", str(state_file))
    monkeypatch.setenv("FAKE_LOG", str(log))
    cfg = {"node": "replica-r-1", "replication_user": "replication", "replication_password": "repl-SECRET-1",
           "ssl_ca": "/ca.pem", "databases": ["keystone"], "domain_ids": [1], "max_lag_s": 60,
           "sources": [{"name": "galera-a-1", "address": "10.9.1.42", "region": "a"},
                       {"name": "galera-b-1", "address": "10.9.2.42", "region": "b"},
                       {"name": "galera-c-1", "address": "10.9.3.42", "region": "c"}],
           "users": [{"name": "keystone", "password": "ks-SECRET-2", "database": "keystone",
                      "hosts": ["10.9.4.0/255.255.255.0"], "require_ssl": True}]}
    (tmp_path / "replica.json").write_text(json.dumps(cfg))
    monkeypatch.setattr(rn, "CONFIG", str(tmp_path / "replica.json"))
    monkeypatch.setattr(rn, "SEED_MARKER", str(tmp_path / "seeded.json"))
    monkeypatch.setattr(rn, "reachable", lambda address, timeout=2.0: not state["sources"][address].get("down"))

    def set_state(**changes):
        current = json.loads(state_file.read_text())
        current.update(changes)
        state_file.write_text(json.dumps(current))
        state.update(changes)

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    cfg["seed_dir"] = str(tmp_path)
    (tmp_path / "replica.json").write_text(json.dumps(cfg))
    return rn, cfg, set_state, calls


def test_gtid_sets_compare_per_domain_in_the_replicated_domains():
    rn = _agent()
    assert rn.parse_gtids("1-1-40, 1001-1-3\n") == {1: 40, 1001: 3}
    assert rn.missing_from("1-1-40", "1-1-40", {1}) == []
    assert rn.missing_from("1-1-41", "1-1-40", {1}) == []
    assert rn.missing_from("1-1-39", "1-1-40", {1}) == ["domain 1: it has 39, this replica applied 40"]
    assert rn.missing_from("", "1-1-40", {1}) == ["domain 1: it has nothing, this replica applied 40"]
    # Another core node's local domain is not replicated: it never blocks a switch.
    assert rn.missing_from("1-1-40", "1-1-40,1001-1-3", {1}) == []
    with pytest.raises(ValueError):
        rn.parse_gtids("1-1")


def test_switch_skips_a_dead_source_and_refuses_one_that_would_miss_transactions(agent):
    rn, cfg, set_state, calls = agent
    set_state(sources={"10.9.1.42": {"gtid_binlog_pos": "1-1-40", "down": True},
                       "10.9.2.42": {"gtid_binlog_pos": "1-1-39"},
                       "10.9.3.42": {"gtid_binlog_pos": "1-1-41"}})
    source, reasons, mine, theirs = rn.switch(cfg)
    assert source["name"] == "galera-c-1" and (mine, theirs) == ("1-1-40", "1-1-41")
    assert reasons == ["galera-b-1: would miss transactions (domain 1: it has 39, this replica applied 40)"]
    sql = "".join(c["sql"] for c in calls() if c["host"] is None)
    assert ("CHANGE MASTER TO MASTER_HOST='10.9.3.42', MASTER_PORT=3306, MASTER_USER='replication', "
            "MASTER_PASSWORD='repl-SECRET-1', MASTER_USE_GTID=slave_pos, MASTER_SSL=1, MASTER_SSL_CA='/ca.pem', "
            "MASTER_SSL_VERIFY_SERVER_CERT=1") in sql
    assert "DO_DOMAIN_IDS=(1)" in sql
    assert sql.index("STOP SLAVE") < sql.index("CHANGE MASTER") < sql.index("START SLAVE")
    # The password travels on stdin and in a 0600 option file, never in argv.
    assert not any("SECRET" in " ".join(c["argv"]) for c in calls())


def test_switch_refuses_when_no_candidate_holds_everything(agent, capsys):
    rn, cfg, set_state, calls = agent
    set_state(sources={"10.9.1.42": {"gtid_binlog_pos": "1-1-40", "down": True},
                       "10.9.2.42": {"gtid_binlog_pos": "1-1-39"},
                       "10.9.3.42": {"gtid_binlog_pos": "1-1-12", "down": True}})
    assert rn.cmd_switch(type("A", (), {"to": None})()) == 1
    err = capsys.readouterr().err
    assert "refused to switch" in err and "galera-b-1: would miss transactions" in err
    assert "galera-c-1: port 3306 does not answer" in err
    assert not any("CHANGE MASTER" in c["sql"] for c in calls())


def test_switch_to_a_named_source_only(agent):
    rn, cfg, set_state, calls = agent
    source, _, _, _ = rn.switch(cfg, to="galera-b-1")
    assert source["address"] == "10.9.2.42"
    with pytest.raises(SystemExit, match="not one of this replica's sources"):
        rn.switch(cfg, to="galera-x-1")


def test_candidates_start_after_the_current_source():
    rn = _agent()
    cfg = {"sources": [{"address": a, "name": a} for a in ("a", "b", "c")]}
    assert [s["address"] for s in rn.candidates(cfg, "b")] == ["c", "a"]
    assert [s["address"] for s in rn.candidates(cfg, None)] == ["a", "b", "c"]


def test_start_seeds_from_the_first_source_that_answers(agent, capsys):
    rn, cfg, set_state, calls = agent
    set_state(slave={}, sources={"10.9.1.42": {"gtid_binlog_pos": "1-1-40", "down": True},
                                 "10.9.2.42": {"gtid_binlog_pos": "1-1-57"},
                                 "10.9.3.42": {"gtid_binlog_pos": "1-1-57"}})
    args = type("A", (), {"no_server": True, "timeout": 5})()
    assert rn.cmd_start(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["action"] == "seeded" and out["source"] == "galera-b-1" and out["gtid"] == "1-1-57"
    dump = next(c for c in calls() if c["prog"] == "mariadb-dump")
    assert dump["host"] == "10.9.2.42"
    assert {"--single-transaction", "--master-data=2", "--gtid", "--databases", "keystone"} <= set(dump["argv"])
    local = "".join(c["sql"] for c in calls() if c["prog"] == "mariadb" and c["host"] is None)
    # Local accounts with binary logging off; Keystone's account reads only.
    assert local.index("SET SESSION sql_log_bin = 0") < local.index("CREATE USER IF NOT EXISTS 'keystone'")
    assert "REQUIRE SSL" in local and "GRANT SELECT ON `keystone`.*" in local
    assert "GRANT ALL" not in local
    assert "SET GLOBAL gtid_slave_pos = '1-1-57'" in local
    assert local.index("SET GLOBAL gtid_slave_pos") < local.index("CHANGE MASTER TO MASTER_HOST='10.9.2.42'")
    assert any("--init-command=SET SESSION sql_log_bin = 0" in c["argv"] for c in calls())
    assert json.loads(Path(rn.SEED_MARKER).read_text())["seeded_from"] == "galera-b-1"
    assert not any("SECRET" in " ".join(c["argv"]) for c in calls())
    # A second start does not seed again: it makes sure replication runs.
    assert rn.cmd_start(args) == 0
    assert json.loads(capsys.readouterr().out)["action"] == "replicating"
    assert sum(c["prog"] == "mariadb-dump" for c in calls()) == 1


def test_start_refuses_when_no_source_can_seed(agent, capsys):
    rn, cfg, set_state, calls = agent
    set_state(sources={a: {"gtid_binlog_pos": "1-1-1", "down": True} for a in ("10.9.1.42", "10.9.2.42", "10.9.3.42")})
    assert rn.cmd_start(type("A", (), {"no_server": True, "timeout": 5})()) == 1
    err = capsys.readouterr().err
    assert "no source could seed this replica" in err and "galera-c-1: port 3306 does not answer" in err
    assert not Path(rn.SEED_MARKER).exists()


def test_status_names_the_source_and_the_lag(agent):
    rn, cfg, set_state, _ = agent
    st = rn.status(cfg)
    assert st["source"] == "galera-a-1" and st["io_running"] == "Connecting"
    assert st["seconds_behind_master"] is None and st["healthy"] is False
    set_state(slave={"Master_Host": "10.9.2.42", "Slave_IO_Running": "Yes", "Slave_SQL_Running": "Yes",
                     "Seconds_Behind_Master": "3", "Gtid_IO_Pos": "1-1-44", "Gtid_Slave_Pos": "1-1-44"})
    st = rn.status(cfg)
    assert (st["source"], st["seconds_behind_master"], st["gtid_io_pos"], st["healthy"]) == \
        ("galera-b-1", 3, "1-1-44", True)
    set_state(slave={**json.loads(Path(__import__("os").environ["FAKE_STATE"]).read_text())["slave"],
                     "Seconds_Behind_Master": "61"})
    assert rn.status(cfg)["healthy"] is False  # beyond max_lag_s
    set_state(slave={})
    assert rn.status(cfg)["healthy"] is False


def test_watch_switches_only_after_the_source_is_down_long_enough():
    rn = _agent()
    down = {"io_running": "Connecting"}
    assert rn.should_switch({"io_running": "Yes"}, False, 100.0, 200.0, 20) == (False, None)
    assert rn.should_switch(down, True, 100.0, 200.0, 20) == (False, None)  # its port answers: not dead
    assert rn.should_switch(down, False, None, 50.0, 20) == (False, 50.0)
    assert rn.should_switch(down, False, 50.0, 69.0, 20) == (False, 50.0)
    assert rn.should_switch(down, False, 50.0, 70.0, 20) == (True, 50.0)


def test_health_server_answers_200_only_when_replicating(agent):
    import threading
    import urllib.error
    import urllib.request
    rn, cfg, set_state, _ = agent
    answers = iter([{"healthy": True, "source": "galera-a-1"}, {"healthy": False, "error": "x"}])
    server = rn.HealthServer(("127.0.0.1", 0), rn.HealthCache(lambda: next(answers), ttl=0))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["source"] == "galera-a-1"
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url, timeout=5)
        assert err.value.code == 503
    finally:
        server.shutdown()
        server.server_close()
