"""Replica regions (issue #15): topology rules, rendering, the proxies' write routing, security
groups. agents/replica-node.py has its own tests (test_replica_node.py)."""

from __future__ import annotations

import pytest

from helpers import ROOT, example, with_replica_region
from keystone_multiregion import changes
from keystone_multiregion.topology import REPLICA, TopologyError, load_topology, load_topology_file


# -- topology ---------------------------------------------------------------------------

def test_a_replica_region_has_replicas_and_no_voters():
    topo = load_topology(with_replica_region())
    r = topo.region("region-r")
    assert r.replica and not r.core and r.sources == ("region-a", "region-b", "region-c")
    assert [n.name for n in topo.nodes("region-r", REPLICA)] == ["replica-region-r-1", "replica-region-r-2"]
    assert topo.nodes("region-r", "galera") == ()
    # The replicas take the galera block: the address plan does not change.
    assert topo.node("replica-region-r-1").address == "10.10.7.42"
    assert topo.node("replica-region-r-1").volume_gb == 20
    # Never members, never voters: the same 9 votes as without the replica region.
    assert topo.galera_voters == load_topology(example()).galera_voters == 9
    assert all(n.role != REPLICA for n in topo.galera_members)
    assert topo.votes_of("region-r") == 0


def test_a_change_that_adds_a_replica_region_touches_no_vote():
    # changes.py plans Galera membership changes from galera_members: the replica region adds none.
    before, after = load_topology(example()), load_topology(with_replica_region())
    assert changes._members(before).keys() == changes._members(after).keys()


def test_each_replica_starts_on_a_different_core_region_and_falls_back_over_all_sources():
    topo = load_topology(with_replica_region(roles={"replica": {"count": 4}}))
    firsts = [topo.replica_sources(n)[0].name for n in topo.nodes("region-r", REPLICA)]
    # Replica n starts in source region (n-1) mod k; the fourth wraps to region-a's second node.
    assert firsts == ["galera-region-a-1", "galera-region-b-1", "galera-region-c-1", "galera-region-a-2"]
    for n in topo.nodes("region-r", REPLICA):
        sources = topo.replica_sources(n)
        assert sorted(s.name for s in sources) == sorted(g.name for g in topo.nodes(role="galera"))
        assert len({s.region for s in sources}) == 3
    two = topo.replica_sources(topo.node("replica-region-r-2"))
    assert [s.region for s in two][:4] == ["region-b"] * 3 + ["region-c"]


def test_configured_sources_are_used_in_their_order():
    topo = load_topology(with_replica_region(sources=["region-c", "region-a"]))
    assert topo.region("region-r").sources == ("region-c", "region-a")
    one, two = (topo.replica_sources(n) for n in topo.nodes("region-r", REPLICA))
    assert (one[0].region, two[0].region) == ("region-c", "region-a")
    assert {s.region for s in one} == {"region-c", "region-a"}


def test_lab_replica_topology_validates():
    topo = load_topology_file(ROOT / "lab" / "topology-region-r.yaml")
    assert [r.name for r in topo.regions if r.core] == ["lab-a", "lab-b", "lab-c"]
    assert topo.galera_voters == 3
    one, two = (topo.replica_sources(n) for n in topo.nodes("lab-r", REPLICA))
    assert one[0].region != two[0].region


def _two_core(**region):
    data = example()
    data["regions"] = data["regions"][:2]
    data["regions"].append({"name": "witness", "index": 9, "cidr": "10.10.9.0/24", "external_network": "public",
                            "witness": True})
    data["arbitrator"] = {"region": "witness"}
    return with_replica_region(data, **region)


def test_two_core_regions_and_a_witness_are_enough():
    topo = load_topology(_two_core())
    assert topo.region("region-r").sources == ("region-a", "region-b")


def _one_core():
    data = example()
    data["regions"] = data["regions"][:1]
    data["regions"][0]["roles"] = {"galera": {"count": 1}}
    return with_replica_region(data)


@pytest.mark.parametrize("data, message", [
    (_one_core(),
     "regions[1].replica: a replica region needs two core regions to replicate from, the topology has 1 (region-a); "
     "add a core region"),
    (with_replica_region(witness=True), "regions[3].replica: is set on a witness region; a region is a witness"),
    (with_replica_region(roles={"galera": {"count": 2}}),
     "regions[3].roles.galera: is set on a replica region, which has no Galera members; give its database nodes "
     "as roles.replica"),
    (with_replica_region(roles={"replica": {"count": 1}}),
     "regions[3].roles.replica.count: 1 is below the minimum of 2; set it to 2 or more (a replica region reads "
     "from two replicas at least"),
    (with_replica_region(roles={"replica": {"weight": 2}}),
     "regions[3].roles.replica.weight: a replica node has no vote"),
    (with_replica_region(sources=["region-a"]),
     "regions[3].sources: names one core region (region-a); list two or more core regions"),
    (with_replica_region(sources=["region-a", "region-a"]), "regions[3].sources[1]: 'region-a' is listed twice"),
    (with_replica_region(sources=["region-a", "region-x"]),
     "regions[3].sources[1]: 'region-x' is not a region in this topology; name core regions: region-a, region-b, "
     "region-c"),
    (with_replica_region(sources=["region-a", "region-r"]),
     "regions[3].sources[1]: 'region-r' is a replica region, not a core region; replicate from core regions only"),
    (_two_core(sources=["region-a", "witness"]),
     "regions[3].sources[1]: 'witness' is a witness region, not a core region"),
    (with_replica_region() | {"bootstrap_region": "region-r"},
     "bootstrap_region: 'region-r' is a replica region, which has no Galera node; bootstrap from a core region"),
    (with_replica_region() | {"arbitrator": {"region": "region-r"}},
     "arbitrator.region: 'region-r' is a replica region; put the arbitrator in a core region"),
])
def test_bad_replica_regions_fail_with_one_clear_line(data, message):
    with pytest.raises(TopologyError) as err:
        load_topology(data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_sources_and_replica_roles_only_on_replica_regions():
    data = example()
    data["regions"][1]["sources"] = ["region-a", "region-c"]
    with pytest.raises(TopologyError, match=r"regions\[1\]\.sources: is set on a region that is not a replica "
                                            r"region; remove sources, or set replica: true"):
        load_topology(data)
    data = example()
    data["regions"][1]["roles"] = {"replica": {"count": 2}}
    with pytest.raises(TopologyError, match=r"regions\[1\]\.roles\.replica: is set on a core region"):
        load_topology(data)
    data = with_replica_region(replicas=2)
    with pytest.raises(TopologyError, match=r"regions\[3\]\.replicas: is not a known setting; use one of .*replica"):
        load_topology(data)


# -- rendering ---------------------------------------------------------------------------

import configparser
import json
import shutil
import subprocess

from keystone_multiregion import pki
from keystone_multiregion.render import render_node
from keystone_multiregion.roles.galera import DB_USERS, GALERA_CONF, TLS_PATHS
from keystone_multiregion.roles.proxy import HAPROXY_CFG, LOCAL_WRITE_ROUTES, core_servers, galera_servers
from keystone_multiregion.roles.replica import REPLICA_CONFIG
from keystone_multiregion.security import PORTS, security_rules

LAB = load_topology_file(ROOT / "lab" / "topology-region-r.yaml")
LAB_SECRETS = pki.generate_secrets(LAB)


def _files(topo, name, secrets=LAB_SECRETS):
    return {f.path: f for f in render_node(topo, name, secrets).files}


def test_a_replica_runs_mariadb_read_only_without_galera():
    files = _files(LAB, "replica-lab-r-2")
    cnf = configparser.ConfigParser(strict=True, allow_no_value=True, interpolation=None)
    cnf.read_string(files[GALERA_CONF].content)
    assert cnf.sections() == ["mysqld"]  # no [galera]: no provider, no wsrep
    assert not any(k.startswith("wsrep") for k in cnf["mysqld"])
    m = cnf["mysqld"]
    assert m["read_only"] == "ON" and m["log_slave_updates"] == "ON" and m["relay_log_recovery"] == "ON"
    assert m["replicate_wild_do_table"] == "keystone.%"
    assert m["bind-address"] == LAB.node("replica-lab-r-2").address
    assert (m["ssl_ca"], m["ssl_cert"], m["ssl_key"]) == (TLS_PATHS["ca"], TLS_PATHS["cert"], TLS_PATHS["key"])
    ids = {}
    for n in LAB.nodes(role=REPLICA):
        c = configparser.ConfigParser(strict=True, interpolation=None)
        c.read_string(_files(LAB, n.name)[GALERA_CONF].content)
        ids[n.name] = int(c["mysqld"]["server_id"])
    # Unique, and never the core's server_id 1.
    assert len(set(ids.values())) == len(ids) and 1 not in ids.values()
    assert files[TLS_PATHS["key"]].permissions == "0600"


def test_a_replica_is_told_its_sources_in_order_and_the_replication_account():
    cfg = json.loads(_files(LAB, "replica-lab-r-1")[REPLICA_CONFIG].content)
    assert [s["name"] for s in cfg["sources"]] == [s.name for s in LAB.replica_sources(LAB.node("replica-lab-r-1"))]
    assert cfg["sources"][0]["region"] == "lab-a"
    assert cfg["replication_user"] == "replication"
    assert cfg["replication_password"] == LAB_SECRETS["galera_replication_password"]
    assert cfg["domain_ids"] == [1] and cfg["ssl_ca"] == TLS_PATHS["ca"]
    assert cfg["users"][0]["hosts"] == ["10.91.5.0/255.255.255.0"] and cfg["users"][0]["require_ssl"]
    assert _files(LAB, "replica-lab-r-1")[REPLICA_CONFIG].permissions == "0600"


def test_core_nodes_get_the_replication_account_for_init_cluster():
    users = json.loads(_files(LAB, "galera-lab-b-1")[DB_USERS].content)
    (repl,) = users["replication_users"]
    assert repl["name"] == "replication" and repl["require_ssl"] is True
    assert repl["hosts"] == [n.address for n in LAB.nodes(role=REPLICA)]
    assert repl["global_privileges"] == ["REPLICATION SLAVE", "BINLOG MONITOR"]
    assert repl["databases"] == {"keystone": ["SELECT", "SHOW VIEW", "TRIGGER", "LOCK TABLES"]}
    # The core's Keystone account is for the core regions' networks only.
    assert users["users"][0]["hosts"] == [f"10.91.{i}.0/255.255.255.0" for i in (1, 2, 3)]
    # Without a replica region there is no replication account at all.
    plain = load_topology_file(ROOT / "lab" / "topology.yaml")
    files = _files(plain, "galera-lab-a-1", pki.generate_secrets(plain))
    assert json.loads(files[DB_USERS].content)["replication_users"] == []


def test_mariadbd_accepts_the_rendered_replica_configuration(tmp_path):
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    path = tmp_path / "replica.cnf"
    path.write_text(_files(LAB, "replica-lab-r-1")[GALERA_CONF].content)
    # --help --verbose parses every option (an unknown one fails) and starts nothing.
    ok = subprocess.run([mariadbd, f"--defaults-file={path}", "--help", "--verbose"], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "read-only                                                    TRUE" in ok.stdout
    path.write_text(path.read_text().replace("read_only = ON", "read_onlyy = ON"))
    bad = subprocess.run([mariadbd, f"--defaults-file={path}", "--help", "--verbose"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "read_onlyy" in bad.stderr


# -- the proxies -------------------------------------------------------------------------

def test_replica_region_database_frontend_serves_its_replicas_only():
    assert [s["name"] for s in galera_servers(LAB, "lab-r")] == ["replica-lab-r-1", "replica-lab-r-2"]
    assert [s["backup"] for s in galera_servers(LAB, "lab-r")] == [False, True]


def test_replica_region_sends_writes_to_a_core_region_and_keeps_token_issue_local():
    cfg = _files(LAB, "proxy-lab-r-1")[HAPROXY_CFG].content
    assert ("POST", r"^/v3/auth/tokens/?$") in LOCAL_WRITE_ROUTES
    for frontend in ("frontend keystone_public", "frontend keystone_internal"):
        block = cfg.split(frontend, 1)[1].split("\nbackend ", 1)[0].split("\nfrontend ", 1)[0]
        assert "acl ks_write method POST PUT PATCH DELETE" in block
        assert ("http-request set-var(txn.ks_local_write) bool(true) if { method POST } "
                "{ path_reg ^/v3/auth/tokens/?$ }") in block
        assert "use_backend keystone_core if ks_write !{ var(txn.ks_local_write) -m bool }" in block
        # Write routing comes before the forwarded-request rule: a forwarded write goes to the core too.
        assert block.index("use_backend keystone_core") < block.index("use_backend keystone_local")
        assert "http-request return status 503" in block and "{ nbsrv(keystone_core) eq 0 }" in block
    core = cfg.split("\nbackend keystone_core", 1)[1].split("\nbackend ", 1)[0]
    servers = [line.split()[1] for line in core.splitlines() if line.strip().startswith("server ")]
    assert servers == [s["name"] for s in core_servers(LAB, "lab-r")]
    assert servers[:2] == ["vip-lab-a-public-1", "vip-lab-a-public-2"]  # its first source region takes writes
    assert "retry-on conn-failure\n" in core  # a change is never sent twice
    # A core region's proxies route nothing to the core: no write routing at all.
    assert "ks_write" not in _files(LAB, "proxy-lab-a-1")[HAPROXY_CFG].content


def test_a_replica_regions_keystone_sends_what_its_replica_refused_to_the_core():
    """The wrapper's setting (uwsgi env) names the region's internal endpoint in a replica
    region only; the internal frontend sends a request with the wrapper's header to the core
    (the public frontend has no such rule: a client's header there routes nothing)."""
    from keystone_multiregion.roles.keystone import UWSGI_INI, endpoint_urls
    from keystone_multiregion.roles.proxy import WRITE_ELSEWHERE_HEADER
    ini = _files(LAB, "keystone-lab-r-1")[UWSGI_INI].content
    assert f"env = KEYSTONE_MULTIREGION_WRITE_ELSEWHERE={endpoint_urls(LAB, 'lab-r')['internal']}\n" in ini
    assert "WRITE_ELSEWHERE" not in _files(LAB, "keystone-lab-a-1")[UWSGI_INI].content
    cfg = _files(LAB, "proxy-lab-r-1")[HAPROXY_CFG].content
    public = cfg.split("frontend keystone_public", 1)[1].split("\nfrontend ", 1)[0]
    internal = cfg.split("frontend keystone_internal", 1)[1].split("\nbackend ", 1)[0]
    rule = (f"http-request set-var(txn.ks_local_write) bool(false) if {{ req.hdr({WRITE_ELSEWHERE_HEADER}) "
            "-m found }")
    assert rule in internal and rule not in public
    assert internal.index(rule) < internal.index("use_backend keystone_core")


# -- security groups ---------------------------------------------------------------------

def _allowed(topo, region, group, port):
    return {(r.remote or f"sg:{r.remote_group}") for r in security_rules(topo, region)
            if r.group == group and r.port == port}


def test_replication_reaches_the_core_galera_nodes_from_replicas_only():
    replicas = {f"{n.address}/32" for n in LAB.nodes(role=REPLICA)}
    for region in ("lab-a", "lab-b", "lab-c"):
        mysql = _allowed(LAB, region, "galera", PORTS["mysql"])
        assert replicas <= mysql
        # Not the replica region's proxies or Keystone nodes: they never reach the core's database.
        for n in LAB.nodes("lab-r"):
            if n.role != REPLICA:
                assert f"{n.address}/32" not in mysql, n.name
        # Replication is MySQL's port only: never Galera's own ports.
        for port in ("galera_replication", "galera_ist", "galera_sst", "galera_health"):
            assert not replicas & _allowed(LAB, region, "galera", PORTS[port]), port
    assert _allowed(LAB, "lab-r", REPLICA, PORTS["mysql"]) == {"sg:proxy"}
    # The proxies ask it, and the region's other replicas (node-agent's guard before a restart).
    assert _allowed(LAB, "lab-r", REPLICA, PORTS["galera_health"]) == {"sg:proxy", f"sg:{REPLICA}"}
    assert {r.group for r in security_rules(LAB, "lab-r")} == {"proxy", "keystone", "memcached", REPLICA}


def test_configured_sources_open_only_their_regions():
    topo = load_topology(with_replica_region(sources=["region-a", "region-b"]))
    replicas = {f"{n.address}/32" for n in topo.nodes(role=REPLICA)}
    assert replicas <= _allowed(topo, "region-a", "galera", PORTS["mysql"])
    assert not replicas & _allowed(topo, "region-c", "galera", PORTS["mysql"])
