"""The lab's object store (lab/objectstore.py) as plain data: its address, Swift's
configuration files, the ring builder's commands, the firewall, the CLI's environment."""
from __future__ import annotations

import configparser

from keystone_multiregion.topology import load_topology_file
from lab import objectstore
from lab.deployment import LAB_TOPOLOGY
from lab.ssh import ops_address

TOPO = load_topology_file(LAB_TOPOLOGY)
KEYS = {"backup": "k-backup-0123456789abcdef", "other": "k-other-0123456789abcdef"}


def _ini(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(text)
    return cp


def test_the_store_is_the_20th_address_of_admin_cidr():
    assert str(objectstore.address(TOPO)) == "10.91.0.20/24"
    assert objectstore.address(TOPO).ip != ops_address(TOPO).ip
    assert objectstore.auth_url("10.91.0.20") == "http://10.91.0.20:8080/auth/v1.0"


def test_swift_conf_carries_the_hash_path_values_and_one_default_policy():
    cp = _ini(objectstore.swift_conf("pre", "suf"))
    assert dict(cp["swift-hash"]) == {"swift_hash_path_prefix": "pre", "swift_hash_path_suffix": "suf"}
    assert cp["storage-policy:0"]["default"] == "yes"


def test_new_secrets_are_random_each_time():
    a, b = objectstore.new_secrets(), objectstore.new_secrets()
    assert a["hash_path_prefix"] != b["hash_path_prefix"] and a["keys"]["backup"] != b["keys"]["backup"]
    assert a["keys"]["backup"] != a["keys"]["other"] and len(a["keys"]["backup"]) >= 24


def test_proxy_conf_tempauth_backup_is_admin_other_is_not():
    cp = _ini(objectstore.proxy_conf("10.91.0.20", KEYS))
    assert cp["DEFAULT"]["bind_ip"] == "10.91.0.20" and cp["DEFAULT"]["bind_port"] == "8080"
    pipeline = cp["pipeline:main"]["pipeline"].split()
    assert pipeline[-1] == "proxy-server" and pipeline.index("cache") < pipeline.index("tempauth")
    auth = cp["filter:tempauth"]
    assert auth["use"] == "egg:swift#tempauth"
    assert auth["user_ksl_backup"].split() == [KEYS["backup"], ".admin", "http://10.91.0.20:8080/v1/AUTH_ksl"]
    assert auth["user_ksl_other"].split() == [KEYS["other"], "http://10.91.0.20:8080/v1/AUTH_ksl"]
    assert [k for k in auth if k.startswith("user_")] == ["user_ksl_backup", "user_ksl_other"]
    assert cp["filter:cache"]["memcache_servers"] == "127.0.0.1:11211"
    assert cp["app:proxy-server"]["account_autocreate"] == "true"
    for name in pipeline[:-1]:  # every filter of the pipeline is defined
        assert f"filter:{name}" in cp, name


def test_backend_servers_on_loopback_with_directory_devices():
    for kind, port in objectstore.SERVERS.items():
        cp = _ini(objectstore.server_conf(kind))
        d = cp["DEFAULT"]
        assert (d["bind_ip"], d["bind_port"], d["devices"], d["mount_check"], d["user"]) == \
            ("127.0.0.1", str(port), "/srv/node", "false", "swift")
        assert cp["pipeline:main"]["pipeline"].split() == ["healthcheck", f"{kind}-server"]
        assert cp[f"app:{kind}-server"]["use"] == f"egg:swift#{kind}"


def test_rings_have_one_replica_and_one_device_each():
    cmds = objectstore.ring_commands("/etc/swift")
    assert len(cmds) == 9
    for kind, port in objectstore.SERVERS.items():
        mine = [c for c in cmds if c[1] == f"/etc/swift/{kind}.builder"]
        assert [c[2] for c in mine] == ["create", "add", "rebalance"]
        assert mine[0][3:] == [str(objectstore.PART_POWER), "1", "0"]  # part power, 1 replica, min_part_hours
        assert mine[1][3:] == [f"r1z1-127.0.0.1:{port}/{kind}", "100"]


def test_firewall_admits_8080_from_the_given_sources_only():
    text = objectstore.ruleset(["10.91.1.10", "10.91.0.10"])
    lines = [line.strip() for line in text.splitlines()]
    assert "type filter hook input priority 0; policy drop;" in lines
    assert "ct state established,related accept" in lines and "iif lo accept" in lines
    assert [line for line in lines if "dport" in line] == [
        "ip saddr 10.91.1.10 tcp dport 8080 accept", "ip saddr 10.91.0.10 tcp dport 8080 accept"]


def test_swift_env_puts_the_v1_credentials_in_the_environment():
    creds = {"auth_url": "http://10.91.0.20:8080/auth/v1.0", "user": "ksl:backup", "key": "s3cret"}
    assert objectstore.swift_env(creds) == {"ST_AUTH": creds["auth_url"], "ST_USER": "ksl:backup", "ST_KEY": "s3cret"}
