"""The Galera layer as rendered: configuration, TLS, safe bootstrap, arbitrator."""

import configparser
import importlib.util
import json
import subprocess

import pytest
import yaml

from helpers import example, five_regions
from keystone_multiregion import pki
from keystone_multiregion.render import AGENTS, TEMPLATES, render_node
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
    assert files["/usr/local/sbin/galera-node"].content == (AGENTS / "galera-node.py").read_text()


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
    # The drop-in that keeps MariaDB off a missing volume is loaded before anything starts it.
    assert doc["runcmd"] == [
        ["rm", "-f", "/usr/sbin/policy-rc.d"], ["systemctl", "daemon-reload"],
        ["python3", "/usr/local/sbin/galera-node", "prepare"], ["python3", "/usr/local/sbin/galera-node", "start"],
        ["systemctl", "enable", "--now", "galera-health.service"],
        ["systemctl", "enable", "--now", "prometheus-mysqld-exporter.service"],
        ["systemctl", "enable", "--now", "keystone-multiregion-backup.timer"],
        # Then what every node runs (roles/node.py): node_exporter on its settings, the metrics timer.
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "prometheus-node-exporter.service", "keystone-multiregion-metrics.timer"],
        ["systemctl", "restart", "prometheus-node-exporter.service"],
        ["systemctl", "start", "keystone-multiregion-metrics.timer"]]
    # The exporter's settings are written before its package installs (cloud-init keeps them).
    exporter = _files(render_node(topo, "galera-region-a-1", secrets))["/etc/default/prometheus-mysqld-exporter"]
    assert 'DATA_SOURCE_NAME="prometheus@unix(/run/mysqld/mysqld.sock)/"' in exporter.content
    assert 'ARGS="--web.listen-address=10.10.1.42:9104"' in exporter.content
    assert "prometheus-mysqld-exporter" in doc["packages"]


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
    spec = importlib.util.spec_from_file_location("galera_node", AGENTS / "galera-node.py")
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
    source = (AGENTS / "galera-node.py").read_text()
    # Shipped as is (not a jinja2 template) and runnable by the image's python3.
    assert "{{" not in source and "{%" not in source
    assert subprocess.run(["/usr/bin/python3", str(AGENTS / "galera-node.py"), "--help"],
                          capture_output=True).returncode == 0



# -- secrets never in a command line (issue 12, item 5) -------------------------------------

FAKE_MARIADB = """#!/bin/sh
# Records its argv (one argument a line) and its stdin; answers like a server would.
log="$FAKE_MARIADB_LOG"
{ echo "--- argv"; for a in "$@"; do echo "$a"; done; echo "--- stdin"; cat; echo; } >> "$log"
for a in "$@"; do
  case "$a" in
    --defaults-file=*) f="${a#--defaults-file=}"; echo "--- option file mode $(stat -c %a "$f")" >> "$log";;
  esac
done
host=""
while [ "$#" -gt 0 ]; do [ "$1" = "-h" ] && host="$2"; shift; done
case "$host" in
  10.9.0.2) printf 'wsrep_cluster_status\\t%s\\n' "${FAKE_PEER_STATUS:-Primary}";;
  10.9.0.3) echo "ERROR 2002 (HY000): Can't connect to server on '10.9.0.3' (115)" >&2; exit 1;;
esac
exit 0
"""


@pytest.fixture
def node_files(tmp_path, monkeypatch):
    """galera-node pointed at temporary files, with a fake `mariadb` first on PATH."""
    gn = _galera_node()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mariadb").write_text(FAKE_MARIADB)
    (bin_dir / "mariadb").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    log = tmp_path / "mariadb.log"
    monkeypatch.setenv("FAKE_MARIADB_LOG", str(log))
    sst = tmp_path / "sst.cnf"
    sst.write_text("[galera]\nwsrep_sst_auth = sst:sst-SECRET-1\n")
    root = tmp_path / "my.cnf"
    root.write_text("[client]\nuser = root\npassword = root-SECRET-2\n")
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"databases": ["keystone"], "status_user": "keystone", "ssl_ca": "/ca.pem",
                                 "users": [{"name": "keystone", "password": "ks-SECRET-3", "database": "keystone",
                                            "hosts": ["10.9.0.0/255.255.255.0"], "require_ssl": True}]}))
    monkeypatch.setattr(gn, "SECRET_FILES", (str(sst), "/nonexistent"))
    monkeypatch.setattr(gn, "ROOT_MY_CNF", str(root), raising=False)
    monkeypatch.setattr(gn, "root_password", lambda: "root-SECRET-2")
    monkeypatch.setattr(gn, "DB_USERS", str(users))
    return gn, log


def _calls(log):
    """[(argv, stdin)] of every fake mariadb run."""
    calls = []
    for chunk in log.read_text().split("--- argv\n")[1:]:
        argv, stdin = chunk.split("--- stdin\n", 1)
        stdin = "".join(line for line in stdin.splitlines(True) if not line.startswith("--- option file"))
        calls.append((argv.splitlines(), stdin))
    return calls


def test_init_cluster_sends_passwords_on_stdin_never_in_argv(node_files, capsys):
    gn, log = node_files
    assert gn.cmd_init_cluster(None) == 0
    calls = _calls(log)
    everything_in_argv = "\n".join("\n".join(argv) for argv, _ in calls)
    everything_on_stdin = "".join(stdin for _, stdin in calls)
    for secret in ("sst-SECRET-1", "root-SECRET-2", "ks-SECRET-3"):
        assert secret not in everything_in_argv
        assert secret in everything_on_stdin  # the statements that need it did run
    assert not [a for a in everything_in_argv.split("\n") if a == "-e" or a.startswith("-p")]


def test_bootstrap_here_asks_peers_with_an_option_file_and_refuses_a_primary_one(node_files, monkeypatch, capsys):
    gn, log = node_files
    node = {"name": "g1", "address": "10.9.0.1", "galera_peers": ["10.9.0.1", "10.9.0.2", "10.9.0.3"]}
    primary, unknown = gn.primary_peers(node)
    assert primary == ["10.9.0.2"] and unknown == []  # 10.9.0.3: nothing listens there
    calls = _calls(log)
    assert len(calls) == 2
    for argv, stdin in calls:
        assert "ks-SECRET-3" not in "\n".join(argv)
        assert stdin.strip() == "SHOW GLOBAL STATUS LIKE 'wsrep_cluster_status'"
    assert log.read_text().count("--- option file mode 600") == 2
    monkeypatch.setenv("FAKE_PEER_STATUS", "non-Primary")
    assert gn.primary_peers(node) == ([], [])


def test_bootstrap_here_refuses_while_a_peer_is_primary(node_files, tmp_path, monkeypatch, capsys):
    gn, _ = node_files
    _volume(gn, tmp_path, monkeypatch)
    (tmp_path / "data" / "grastate.dat").write_text("uuid: x\nseqno: 7\nsafe_to_bootstrap: 0\n")
    monkeypatch.setattr(gn, "GRASTATE", str(tmp_path / "data" / "grastate.dat"))
    monkeypatch.setattr(gn, "facts", lambda: {"name": "g1", "address": "10.9.0.1",
                                              "galera_peers": ["10.9.0.1", "10.9.0.2"]})
    args = gn.main.__globals__["argparse"].Namespace(ignore_peer=[], exec=True, timeout=1)
    assert gn.cmd_bootstrap_here(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("galera-node: refusing to bootstrap from this node: 10.9.0.2 already run a Primary component: "
                   "start this node normally (systemctl start mariadb) and it joins them")
    assert "safe_to_bootstrap: 0" in (tmp_path / "data" / "grastate.dat").read_text()


# -- the data volume (issue 12, item 9) ------------------------------------------------------

def _volume(gn, tmp_path, monkeypatch, mounted=True, label=True, same_device=True):
    """A data directory (mounted or not), a by-label directory, and os.stat seeing a block
    device there (the device number of the data directory's file system, or another)."""
    import os
    import stat as st
    data, labels, host = tmp_path / "data", tmp_path / "by-label", tmp_path / "host"
    for d in (data, labels, host):
        d.mkdir(exist_ok=True)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("27 1 254:0 / / rw - ext4 /dev/vda rw\n"
                         + (f"40 27 254:16 / {data} rw - ext4 /dev/vdc rw\n" if mounted else ""))
    device = labels / "galera-data"
    if label:
        device.write_text("")
    real_stat = os.stat
    rdev = real_stat(data).st_dev if same_device else real_stat(data).st_dev + 1

    def fake_stat(path, *a, **kw):
        result = real_stat(path, *a, **kw)
        if str(path) == str(device):
            fields = list(result)
            fields[0] = st.S_IFBLK | 0o660
            out = os.stat_result(fields, {"st_rdev": rdev})
            return out
        return result
    monkeypatch.setattr(gn.os, "stat", fake_stat)
    monkeypatch.setattr(gn, "DATADIR", str(data))
    monkeypatch.setattr(gn, "BY_LABEL", str(labels))
    monkeypatch.setattr(gn, "MOUNTINFO", str(mountinfo))
    monkeypatch.setattr(gn, "GRASTATE", str(data / "grastate.dat"))
    monkeypatch.setattr(gn, "VOLUME_MARKER", str(data / "keystone-multiregion-cluster.json"))
    monkeypatch.setattr(gn, "HOST_MARKER", str(host / "galera-cluster.json"))
    return data, host


class _Exec(Exception):
    """Raised where galera-node would have replaced itself with mariadbd."""


def _fake_exec(gn, monkeypatch):
    """Record what mariadbd would have been started with; nothing after it runs (no
    galera_new_cluster, no systemctl)."""
    started = []

    def fake(extra):
        started.append(extra)
        raise _Exec()

    def no_commands(*args, **kwargs):
        raise AssertionError(f"galera-node ran {args} in a test")
    monkeypatch.setattr(gn, "_exec_mariadbd", fake)
    monkeypatch.setattr(gn.subprocess, "run", no_commands)
    return started


def test_the_data_volume_is_recognised_by_its_label(tmp_path, monkeypatch):
    gn = _galera_node()
    _volume(gn, tmp_path, monkeypatch)
    assert gn.volume_problem() is None


@pytest.mark.parametrize("case,message", [
    ({"mounted": False}, "{data} is not a mount point: the data volume is not mounted (a failed attach leaves an "
                         "empty directory); attach the volume, check `findmnt LABEL=galera-data`, then `mount {data}`"),
    ({"label": False}, "no file system labelled galera-data ({labels}/galera-data is missing): the data volume is "
                       "not attached; attach it and mount it on {data}"),
    ({"same_device": False}, "{data} is not the file system labelled galera-data"),
])
def test_start_refuses_without_the_data_volume(tmp_path, monkeypatch, capsys, case, message):
    gn = _galera_node()
    data, _ = _volume(gn, tmp_path, monkeypatch, **case)
    monkeypatch.setattr(gn, "facts", lambda: {"name": "g1", "address": "10.9.0.1", "galera_bootstrap": True,
                                              "galera_peers": ["10.9.0.1"]})
    started = _fake_exec(gn, monkeypatch)
    args = gn.main.__globals__["argparse"].Namespace(exec=True, timeout=1)
    assert gn.cmd_start(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("galera-node: refusing to start MariaDB: ")
    assert message.format(data=data, labels=tmp_path / "by-label") in err
    assert started == [] and not (tmp_path / "host" / "galera-cluster.json").exists()


@pytest.mark.parametrize("trace,named", [
    ("grastate.dat", None),  # grastate.dat means "join", checked by decide()
    ("gvwstate.dat", "gvwstate.dat"),
    ("galera.cache", "galera.cache"),
    ("keystone/", "database keystone"),
    ("keystone-multiregion-cluster.json", "keystone-multiregion-cluster.json (this node started a cluster)"),
    ("host:galera-cluster.json", "galera-cluster.json (this node started a cluster)"),
])
def test_a_new_cluster_only_from_a_volume_without_any_trace_of_one(tmp_path, monkeypatch, capsys, trace, named):
    gn = _galera_node()
    data, host = _volume(gn, tmp_path, monkeypatch)
    (data / "mysql").mkdir()  # the system tables of a fresh install are no trace
    (data / "lost+found").mkdir()
    monkeypatch.setattr(gn, "facts", lambda: {"name": "g1", "address": "10.9.0.1", "galera_bootstrap": True,
                                              "deployment": "idp", "galera_peers": ["10.9.0.1"]})
    started = _fake_exec(gn, monkeypatch)
    args = gn.main.__globals__["argparse"].Namespace(exec=True, timeout=1)
    assert gn.new_cluster_refusal() is None
    where = host if trace.startswith("host:") else data
    name = trace.split(":", 1)[-1]
    if name.endswith("/"):
        (where / name).mkdir()
    else:
        (where / name).write_text("x\n" if name != "grastate.dat" else "uuid: x\nseqno: 3\n")
    try:
        gn.cmd_start(args)
    except _Exec:
        pass
    err = capsys.readouterr().err
    if named is None:
        assert started == [[]]  # joins
        return
    assert started == []
    assert err.startswith("galera-node: refusing to start a new cluster: this node's data has been part of a "
                          "cluster (") and named in err and err.count("\n") == 1


def test_a_new_cluster_writes_its_markers_on_the_volume_and_the_root_disk(tmp_path, monkeypatch, capsys):
    gn = _galera_node()
    data, host = _volume(gn, tmp_path, monkeypatch)
    monkeypatch.setattr(gn, "facts", lambda: {"name": "g1", "address": "10.9.0.1", "galera_bootstrap": True,
                                              "deployment": "idp", "galera_peers": ["10.9.0.1"]})
    started = _fake_exec(gn, monkeypatch)
    with pytest.raises(_Exec):
        gn.cmd_start(gn.main.__globals__["argparse"].Namespace(exec=True, timeout=1))
    assert started == [["--wsrep-new-cluster"]]
    for marker in (data / "keystone-multiregion-cluster.json", host / "galera-cluster.json"):
        assert json.loads(marker.read_text())["node"] == "g1"
    # The next start without grastate.dat (a crash before Galera wrote it) no longer starts one.
    assert "this node started a cluster" in gn.new_cluster_refusal()


def test_bootstrap_here_refuses_without_the_data_volume(tmp_path, monkeypatch, capsys):
    gn = _galera_node()
    _volume(gn, tmp_path, monkeypatch, label=False)
    args = gn.main.__globals__["argparse"].Namespace(ignore_peer=[], exec=True, timeout=1)
    assert gn.cmd_bootstrap_here(args) == 2
    assert capsys.readouterr().err.startswith("galera-node: refusing to bootstrap from this node: no file system "
                                              "labelled galera-data")


def test_rendered_files_agree_with_the_agent(topo, secrets):
    from keystone_multiregion.roles import galera as role
    gn = _galera_node()
    assert (gn.DATA_LABEL, gn.DATADIR, gn.HEALTH_USER, gn.DB_USERS) == (
        role.GALERA_DATA_LABEL, role.GALERA_DATADIR, role.HEALTH_USER, role.DB_USERS)
    files = _files(render_node(topo, "galera-region-a-1", secrets))
    unit = _ini(files["/etc/systemd/system/galera-health.service"].content)
    assert unit["Service"]["User"] == gn.HEALTH_USER and unit["Service"]["NoNewPrivileges"] == "yes"
    dropin = _ini(files["/etc/systemd/system/mariadb.service.d/keystone-multiregion.conf"].content)
    assert dropin["Unit"]["RequiresMountsFor"] == "/var/lib/mysql"
    users = json.loads(files[role.DB_USERS].content)
    assert users["status_user"] in [u["name"] for u in users["users"]] and users["ssl_ca"] == "/etc/mysql/ssl/ca.pem"


# -- recover-plan wants every node's report --------------------------------------------------

def _reports(tmp_path, names):
    paths = []
    for i, name in enumerate(names):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"node": name, "uuid": "u", "seqno": 10 + i, "safe_to_bootstrap": 0}) + "\n")
        paths.append(str(path))
    return paths


def test_recover_plan_names_the_missing_reports(tmp_path, capsys):
    from keystone_multiregion.__main__ import main
    topo = load_topology(example())
    names = [n.name for n in topo.nodes(role="galera")]
    paths = _reports(tmp_path, names[:-2])
    assert main(["recover-plan", *paths]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: no report from {names[-2]}, {names[-1]}: run `galera-node recover-report` there too, "
                   "or, if that node's data is lost for good, repeat with --accept-missing\n")
    assert main(["recover-plan", "--accept-missing", *paths]) == 0
    out = capsys.readouterr().out
    assert f"{names[-1]}: NO REPORT" in out and f"bootstrap from {names[-3]}" in out
    assert main(["recover-plan", *_reports(tmp_path, names)]) == 0


def test_recover_plan_refuses_reports_of_other_nodes(tmp_path, capsys):
    from keystone_multiregion.__main__ import main
    names = [n.name for n in load_topology(example()).nodes(role="galera")]
    assert main(["recover-plan", *_reports(tmp_path, names + ["galera-elsewhere-1"])]) == 2
    assert "not Galera nodes of this topology: galera-elsewhere-1" in capsys.readouterr().err


# -- the health server: unprivileged, one query per second -----------------------------------

def test_health_cache_answers_a_flood_with_one_query():
    import threading
    gn = _galera_node()
    calls = []
    now = [100.0]
    cache = gn.HealthCache(lambda: calls.append(1) or {"wsrep_cluster_status": "Primary"}, ttl=1.0,
                           clock=lambda: now[0])
    threads = [threading.Thread(target=cache.get) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    now[0] += 1.0
    assert cache.get() == {"wsrep_cluster_status": "Primary"} and len(calls) == 2


def test_health_server_serves_from_the_cache(monkeypatch):
    import threading
    import urllib.error
    import urllib.request
    gn = _galera_node()
    calls = []
    status = {"wsrep_local_state_comment": "Synced", "wsrep_cluster_status": "Primary", "wsrep_ready": "ON"}
    server = gn.HealthServer(("127.0.0.1", 0), gn.HealthCache(lambda: calls.append(1) or status, clock=lambda: 5.0),
                             max_clients=2)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        codes = [urllib.request.urlopen(url, timeout=10).status for _ in range(20)]
    finally:
        server.shutdown()
        server.server_close()
    assert codes == [200] * 20 and len(calls) == 1


def test_health_server_runs_as_its_own_user_not_root(monkeypatch):
    gn = _galera_node()
    seen = []
    monkeypatch.setattr(gn.os, "geteuid", lambda: 0 if not seen else 1000)
    monkeypatch.setattr(gn.os, "getuid", lambda: 1000)
    monkeypatch.setattr(gn.os, "setgroups", lambda groups: seen.append(("groups", groups)))
    monkeypatch.setattr(gn.os, "setgid", lambda gid: seen.append(("gid", gid)))
    monkeypatch.setattr(gn.os, "setuid", lambda uid: seen.append(("uid", uid)))
    import pwd
    monkeypatch.setattr(pwd, "getpwnam", lambda name: pwd.struct_passwd((name, "x", 1000, 1000, "", "/", "/bin/false")))
    gn.drop_privileges("galera-health")
    assert seen == [("groups", []), ("gid", 1000), ("uid", 1000)]


def test_a_drained_member_fails_its_health_check(monkeypatch, tmp_path):
    """node-agent drains a member before a planned restart: while the marker exists the
    check answers 503 (the proxies move its sessions), a healthy answer again once it is gone."""
    import threading
    import urllib.error
    import urllib.request
    gn = _galera_node()
    marker = tmp_path / "galera-drain"
    monkeypatch.setattr(gn, "DRAIN_MARKER", str(marker))
    status = {"wsrep_local_state_comment": "Synced", "wsrep_cluster_status": "Primary", "wsrep_ready": "ON"}
    server = gn.HealthServer(("127.0.0.1", 0), gn.HealthCache(lambda: status, clock=lambda: 5.0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"

    def code():
        try:
            return urllib.request.urlopen(url, timeout=10).status
        except urllib.error.HTTPError as exc:
            return exc.code
    try:
        before = code()
        marker.write_text("1\n")
        during = code()
        marker.unlink()
        after = code()
    finally:
        server.shutdown()
        server.server_close()
    assert (before, during, after) == (200, 503, 200)


def test_init_cluster_creates_the_replicas_account_from_their_addresses_only(node_files, capsys):
    """The replication account of a topology with a replica region: one account per replica
    address, REQUIRE SSL, the binary log stream and a dump of the replicated database; its
    password on stdin only."""
    gn, log = node_files
    spec = json.loads(open(gn.DB_USERS).read())
    spec["replication_users"] = [{"name": "replication", "password": "repl-SECRET-4",
                                  "hosts": ["10.9.4.42", "10.9.4.43"], "require_ssl": True,
                                  "global_privileges": ["REPLICATION SLAVE", "BINLOG MONITOR"],
                                  "databases": {"keystone": ["SELECT", "SHOW VIEW", "TRIGGER", "LOCK TABLES"]}}]
    with open(gn.DB_USERS, "w") as fh:
        json.dump(spec, fh)
    assert gn.cmd_init_cluster(None) == 0
    calls = _calls(log)
    stdin = "".join(s for _, s in calls)
    for host in ("10.9.4.42", "10.9.4.43"):
        account = f"'replication'@'{host}'"
        assert f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY 'repl-SECRET-4' REQUIRE SSL" in stdin
        assert f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO {account}" in stdin
        assert f"GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES ON `keystone`.* TO {account}" in stdin
    assert "repl-SECRET-4" not in "\n".join("\n".join(argv) for argv, _ in calls)
    assert "'replication'@'10.9.0.0/255.255.255.0'" not in stdin
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["users"] == [
        "keystone@10.9.0.0/255.255.255.0", "replication@10.9.4.42", "replication@10.9.4.43"]
