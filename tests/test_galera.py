"""The Galera layer as rendered: configuration, TLS, safe bootstrap, arbitrator."""

import configparser
import importlib.util
import subprocess

import pytest
import yaml

from helpers import example, five_regions
from keystone_multiregion import pki
from keystone_multiregion.render import TEMPLATES, render_node
from keystone_multiregion.roles.galera import GALERA_CONF, GALERA_SST_CONF
from keystone_multiregion.secrets import SecretsError
from keystone_multiregion.topology import TopologyError, load_topology


def secrets_for(topo):
    values = pki.generate_secrets(topo)
    values.update(galera_root_password="rootpw", galera_sst_password="sstpw")
    return values


@pytest.fixture(scope="module")
def topo():
    return load_topology(example())


@pytest.fixture(scope="module")
def secrets(topo):
    return secrets_for(topo)


def _ini(text):
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.read_string(text)
    return parser


def _files(rendered):
    return {f.path: f for f in rendered.files}


def test_galera_settings_from_the_source_design_and_the_wan_guide(topo, secrets):
    files = _files(render_node(topo, "galera-region-b-2", secrets))
    cnf = _ini(files[GALERA_CONF].content)
    g = cnf["galera"]
    assert g["wsrep_on"] == "ON"
    assert g["wsrep_dirty_reads"] == "ON" and g["wsrep_sync_wait"] == "0"
    assert g["wsrep_slave_threads"] == "4"  # m1.large's vCPUs
    assert g["wsrep_sst_method"] == "mariabackup"
    assert g["wsrep_node_address"] == "10.10.2.43" and g["wsrep_node_name"] == "galera-region-b-2"
    assert g["wsrep_cluster_address"] == "gcomm://" + ",".join(n.address for n in topo.nodes(role="galera"))
    assert cnf["mysqld"]["max_connections"] == "2000"
    assert cnf["mysqld"]["bind-address"] == "10.10.2.43"
    options = dict(o.split("=", 1) for o in g["wsrep_provider_options"].strip('"').split(";"))
    assert options["gmcast.segment"] == "2"
    assert (options["evs.keepalive_period"], options["evs.suspect_timeout"], options["evs.inactive_timeout"],
            options["evs.install_timeout"]) == ("PT3S", "PT30S", "PT1M", "PT1M")
    assert options["evs.send_window"] == "512" and options["evs.user_send_window"] == "512"
    assert options["pc.recovery"] == "TRUE"
    # 2 KB/s of writes for 24 h, twice over: a region away for a day rejoins by IST.
    assert options["gcache.size"] == "338M"
    assert options["socket.ssl_ca"] == "/etc/mysql/ssl/ca.pem"
    # SST is encrypted with the node's certificate (encrypt=3), not only configured for TLS.
    sst = cnf["sst"]
    assert (sst["encrypt"], sst["tca"], sst["tcert"], sst["tkey"]) == (
        "3", "/etc/mysql/ssl/ca.pem", "/etc/mysql/ssl/node-cert.pem", "/etc/mysql/ssl/node-key.pem")
    assert "sstpw" not in files[GALERA_CONF].content  # world-readable file: no secrets


def test_secret_files_are_not_world_readable(topo, secrets):
    files = _files(render_node(topo, "galera-region-a-1", secrets))
    assert _ini(files[GALERA_SST_CONF].content)["galera"]["wsrep_sst_auth"] == "sst:sstpw"
    for path in (GALERA_SST_CONF, "/etc/mysql/ssl/node-key.pem", "/root/.my.cnf"):
        assert files[path].permissions == "0600"
    assert files["/etc/mysql/ssl/node-cert.pem"].content == secrets["tls"]["galera-region-a-1"]["cert"]
    assert files["/usr/local/sbin/galera-node"].permissions == "0755"
    assert files["/usr/local/sbin/galera-node"].content == (TEMPLATES / "galera/galera-node.py").read_text()


def test_certificates_carry_the_node_address(topo, secrets):
    cert = secrets["tls"]["galera-region-c-3"]["cert"]
    text = subprocess.run(["openssl", "x509", "-noout", "-text"], input=cert, capture_output=True, text=True,
                          check=True).stdout
    assert "IP Address:10.10.3.44" in text and "DNS:galera-region-c-3" in text
    ca = secrets["galera_ca_cert"]
    with open("/tmp/ksm-test-ca.pem", "w") as fh:
        fh.write(ca)
    verify = subprocess.run(["openssl", "verify", "-CAfile", "/tmp/ksm-test-ca.pem"], input=cert,
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_first_boot_order(topo, secrets):
    doc = yaml.safe_load(render_node(topo, "galera-region-a-1", secrets).user_data)
    # Debian's postinst must not start MariaDB before the node decides how to start.
    assert doc["bootcmd"][0][:3] == ["cloud-init-per", "once", "ksm-deny-service-start"]
    assert [c[:3] for c in doc["runcmd"]] == [
        ["rm", "-f", "/usr/sbin/policy-rc.d"], ["python3", "/usr/local/sbin/galera-node", "prepare"],
        ["python3", "/usr/local/sbin/galera-node", "start"], ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now"]]


def test_only_the_bootstrap_regions_first_node_may_start_a_cluster(topo, secrets):
    import json
    flags = {n.name: json.loads(_files(render_node(topo, n.name, secrets))["/etc/keystone-multiregion/node.json"]
                                .content)["galera_bootstrap"] for n in topo.nodes(role="galera")}
    assert [name for name, flag in flags.items() if flag] == ["galera-region-a-1"]


def test_tls_credentials_are_required(topo, secrets):
    partial = {**secrets, "tls": {}}
    with pytest.raises(SecretsError, match=r"tls\.galera-region-a-1\.cert is missing or empty"):
        render_node(topo, "galera-region-a-1", partial)


def test_arbitrator(secrets):
    data = five_regions()
    data["regions"] = data["regions"][:4]
    data["arbitrator"] = {"region": "par"}
    topo = load_topology(data)
    s = secrets_for(topo)
    rendered = render_node(topo, "arbitrator-par-1", s)
    files = _files(rendered)
    conf = dict(line.split("=", 1) for line in files["/etc/default/garb"].content.splitlines()
                if line and not line.startswith("#"))
    assert conf["GALERA_NODES"].strip('"').split() == [f"{n.address}:4567" for n in topo.nodes(role="galera")]
    assert conf["GALERA_GROUP"] == '"idp"'
    options = conf["GALERA_OPTIONS"].strip('"').split(";")
    assert "gmcast.segment=4" in options and "socket.ssl_key=/etc/mysql/ssl/node-key.pem" in options
    assert not [o for o in options if o.startswith("gcache")]
    assert rendered.secret is True
    assert "galera-arbitrator-4" in yaml.safe_load(rendered.user_data)["packages"]


def test_arbitrator_key_is_readable_by_garbd_alone(secrets):
    # Debian's garb.service runs garbd as `nobody` (shared by other daemons); the key was
    # made readable by group nogroup. garbd gets a system user of its own, the only reader.
    from keystone_multiregion.roles.galera import GARB_DROPIN, GARBD_USER, TLS_PATHS
    data = five_regions()
    data["regions"] = data["regions"][:4]
    data["arbitrator"] = {"region": "par"}
    topo = load_topology(data)
    rendered = render_node(topo, "arbitrator-par-1", secrets_for(topo))
    doc = yaml.safe_load(rendered.user_data)
    assert "nogroup" not in rendered.user_data
    key = next(f for f in doc["write_files"] if f["path"] == TLS_PATHS["key"])
    assert (key["owner"], key["permissions"]) == ("root:root", "0600")  # until its user exists
    steps = doc["runcmd"]
    useradd = steps.index(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                           "--shell", "/usr/sbin/nologin", GARBD_USER])
    assert steps[useradd + 1:useradd + 3] == [["chown", f"root:{GARBD_USER}", TLS_PATHS["key"]],
                                              ["chmod", "0640", TLS_PATHS["key"]]]
    assert steps.index(["systemctl", "enable", "--now", "garb.service"]) > useradd + 2
    dropin = configparser.ConfigParser(interpolation=None)
    dropin.optionxform = str
    dropin.read_string(_files(rendered)[GARB_DROPIN].content)
    service = dropin["Service"]
    assert service["User"] == service["Group"] == GARBD_USER
    # What garbd writes is its own: WORK_DIR and LOG_FILE's directory are the unit's.
    conf = dict(line.split("=", 1) for line in _files(rendered)["/etc/default/garb"].content.splitlines()
                if line and not line.startswith("#"))
    assert conf["WORK_DIR"].strip('"') == f"/var/lib/{service['StateDirectory']}"
    assert conf["LOG_FILE"].strip('"').rsplit("/", 1)[0] == f"/var/log/{service['LogsDirectory']}"


BAD_GALERA = [
    ({"evs_suspect_timeout": "PT2S", "evs_keepalive_period": "PT3S"},
     "topology: galera.evs_suspect_timeout: needs keepalive_period < suspect_timeout <= inactive_timeout, got PT3S, "
     "PT2S, PT1M; raise the timeouts in that order (Codership's WAN values: PT3S, PT30S, PT1M)"),
    ({"evs_install_timeout": "PT2M"},
     "topology: galera.evs_install_timeout: PT2M is longer than evs_inactive_timeout PT1M; keep install_timeout at "
     "or below inactive_timeout"),
    ({"evs_keepalive_period": "3s"},
     "topology: galera.evs_keepalive_period: '3s' is not a duration; write it as Galera does, e.g. PT3S or PT1M"),
    ({"gcache_size": 10},
     "topology: galera.gcache_size: is not a known setting; use one of buffer_pool_mb, evs_inactive_timeout, "
     "evs_install_timeout, evs_keepalive_period, evs_send_window, evs_suspect_timeout, evs_user_send_window, "
     "gcache_mb, max_connections, rejoin_window_hours, write_rate_kb_s"),
]


@pytest.mark.parametrize("override,message", BAD_GALERA)
def test_bad_galera_settings(override, message):
    data = example()
    data["galera"] = override
    with pytest.raises(TopologyError) as info:
        load_topology(data)
    assert str(info.value) == message


def test_gcache_follows_the_rejoin_window():
    data = example()
    data["galera"] = {"rejoin_window_hours": 72, "write_rate_kb_s": 4}
    assert load_topology(data).galera.gcache_mb == 2025  # 4 KB/s * 72 h * 2
    data["galera"] = {"gcache_mb": 64}
    assert load_topology(data).galera.gcache_mb == 64


# -- galera-node, the script every Galera node runs ---------------------------------------

def _galera_node():
    spec = importlib.util.spec_from_file_location("galera_node", TEMPLATES / "galera/galera-node.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BOOT = {"galera_bootstrap": True}
OTHER = {"galera_bootstrap": False}
DATA = {"uuid": "x", "seqno": 42, "safe_to_bootstrap": 0}


@pytest.mark.parametrize("facts,grastate,peers,action", [
    (BOOT, None, [], "new-cluster"),        # first boot of the whole deployment
    (BOOT, None, ["10.0.0.2"], "join"),     # a cluster already runs: join it
    (BOOT, DATA, [], "join"),               # data exists: never a new cluster by itself
    (BOOT, {**DATA, "safe_to_bootstrap": 1}, [], "join"),  # even when marked safe: that is recovery's call
    (OTHER, None, [], "join"),
    (OTHER, DATA, [], "join"),
])
def test_safe_bootstrap_decision(facts, grastate, peers, action):
    assert _galera_node().decide(facts, grastate, peers) == action


def test_grastate_parsing(tmp_path):
    path = tmp_path / "grastate.dat"
    path.write_text("# GALERA saved state\nversion: 2.1\nuuid:    4c030008-e609-11f1-85a8-26b22ebbb202\n"
                    "seqno:   -1\nsafe_to_bootstrap: 0\n")
    assert _galera_node().read_grastate(str(path)) == {
        "version": "2.1", "uuid": "4c030008-e609-11f1-85a8-26b22ebbb202", "seqno": -1, "safe_to_bootstrap": 0}
    assert _galera_node().read_grastate(str(tmp_path / "absent")) is None


def test_galera_node_uses_only_the_standard_library():
    source = (TEMPLATES / "galera/galera-node.py").read_text()
    # Shipped as is (not a jinja2 template) and runnable by the image's python3.
    assert "{{" not in source and "{%" not in source
    assert subprocess.run(["/usr/bin/python3", str(TEMPLATES / "galera/galera-node.py"), "--help"],
                          capture_output=True).returncode == 0
