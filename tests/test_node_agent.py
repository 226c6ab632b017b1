"""agents/node-agent.py, the program that applies pushed files on every node: run as a
process against a temporary tree (NODE_AGENT_ROOT) with stand-ins for systemctl, haproxy,
keepalived, mariadb and mariadbd on PATH that record how they were called. The payloads are
the real ones (keystone_multiregion/push.py) of the example topology's nodes."""

from __future__ import annotations

import http.server
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from keystone_multiregion import push
from keystone_multiregion.render import AGENTS, render_node
from keystone_multiregion.roles.galera import GALERA_CONF, GALERA_NODE_TOOL
from keystone_multiregion.roles.proxy import HAPROXY_CFG, KEEPALIVED_CONF
from keystone_multiregion.roles.replica import REPLICA_CONFIG, REPLICA_TOOL

AGENT = AGENTS / "node-agent.py"

FAKE = """#!/bin/sh
# records its name, arguments and stdin; answers as configured
name=$(basename "$0")
input=$(cat 2>/dev/null || true)
printf '%s %s <<%s>>\\n' "$name" "$*" "$(echo "$input" | tr '\\n' ' ')" >> "$FAKE_LOG"
if [ "$name" = mariadb ] && echo "$input" | grep -q "SHOW GLOBAL STATUS"; then cat "$FAKE_WSREP"; fi
if [ "$name" = systemctl ] && [ "$1" = restart ] && [ -e "$NODE_AGENT_ROOT/var/lib/keystone-multiregion/galera-drain" ]; then
  echo "drained while restarting $2" >> "$FAKE_LOG"; fi
if [ "$name" = haproxy ] && grep -q BROKEN "$4" 2>/dev/null; then echo "[ALERT] parsing: BROKEN" >&2; exit 1; fi
if [ "$name" = mariadbd ] && grep -q "^bogus" "${1#--defaults-file=}" 2>/dev/null; then
  echo "[ERROR] mariadbd: unknown variable 'bogus=1'" >&2; exit 7; fi
exit 0
"""

WHOLE = "wsrep_cluster_size\t{size}\nwsrep_cluster_status\tPrimary\nwsrep_local_state_comment\tSynced\nwsrep_ready\tON\n"

FAKE_GALERA_NODE = """import os, sys
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write("galera-node " + " ".join(sys.argv[1:]) + "\\n")
"""


# replica-node's stand-in: records its call; `status` answers $FAKE_REPLICA (exit 0 when healthy).
FAKE_REPLICA_NODE = """import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as fh:
    fh.write("replica-node " + " ".join(sys.argv[1:]) + "\\n")
if sys.argv[1:2] == ["status"]:
    with open(os.environ["FAKE_REPLICA"]) as fh:
        status = json.load(fh)
    print(json.dumps(status))
    sys.exit(0 if status.get("healthy") else 1)
if sys.argv[1:2] == ["start"]:
    print(json.dumps({"action": "replicating"}))
"""


class Node:
    """A node's tree with its files as cloud-init left them, and the agent to run on it."""

    def __init__(self, tmp: Path, topo, secrets, name: str, monitor: str):
        self.root, self.topo, self.name = tmp / "root", topo, name
        self.rendered = render_node(topo, name, secrets)
        for f in self.rendered.files:
            target = self.root / f.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content)
            os.chmod(target, int(f.permissions, 8))
        bin_dir = tmp / "bin"
        bin_dir.mkdir(exist_ok=True)
        for tool in ("systemctl", "haproxy", "keepalived", "mariadb", "mariadbd", "sysctl"):
            (bin_dir / tool).write_text(FAKE)
            os.chmod(bin_dir / tool, 0o755)
        self.log = tmp / "calls.log"
        self.log.write_text("")
        tool = self.root / GALERA_NODE_TOOL.lstrip("/")
        if tool.exists():  # the real one works on the machine's own /etc; this one records its call
            tool.write_text(FAKE_GALERA_NODE)
        tool = self.root / REPLICA_TOOL.lstrip("/")
        if tool.exists():
            tool.write_text(FAKE_REPLICA_NODE)
        self.replica = tmp / "replica-status.json"
        self.replica.write_text(json.dumps({"healthy": True, "io_running": "Yes", "sql_running": "Yes"}))
        self.wsrep = tmp / "wsrep.txt"
        self.wsrep.write_text(WHOLE.format(size=push.payload(topo, self.rendered)["health"]["galera_cluster_size"]))
        self.env = {**os.environ, "NODE_AGENT_ROOT": str(self.root), "PATH": f"{bin_dir}:{os.environ['PATH']}",
                    "FAKE_LOG": str(self.log), "FAKE_WSREP": str(self.wsrep), "FAKE_REPLICA": str(self.replica)}
        self.monitor = monitor

    def payload(self, **changed: str) -> dict:
        data = push.payload(self.topo, self.rendered)
        data["health"]["haproxy_monitor"] = self.monitor
        for f in data["files"]:
            if f["path"] in changed:
                f["content"] = changed[f["path"]]
        return self.faked(data)

    @staticmethod
    def faked(data: dict) -> dict:
        """The payload with galera-node and replica-node replaced by the stand-ins the tree holds."""
        for f in data["files"]:
            if f["path"] == GALERA_NODE_TOOL:
                f["content"] = FAKE_GALERA_NODE
            if f["path"] == REPLICA_TOOL:
                f["content"] = FAKE_REPLICA_NODE
        return data

    def agent(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(AGENT), *args], input=stdin, capture_output=True, text=True,
                              env=self.env, timeout=60)

    def apply(self, data) -> subprocess.CompletedProcess:
        return self.agent("apply", "--timeout", "5", stdin=data if isinstance(data, str) else push.encode(data))

    def file(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def calls(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def monitor():
    """HAProxy's monitor URI stand-in (loopback, answers 200)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/healthz"
    server.shutdown()


@pytest.fixture
def proxy(tmp_path, topo, secrets, monitor):
    return Node(tmp_path, topo, secrets, "proxy-region-a-1", monitor)


@pytest.fixture
def galera(tmp_path, topo, secrets, monitor):
    return Node(tmp_path, topo, secrets, "galera-region-a-2", monitor)


def _last_json(out: subprocess.CompletedProcess) -> dict:
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_node_gets_the_agent_and_every_action_is_known(topo, secrets):
    from keystone_multiregion.roles.base import NODE_AGENT
    for node in topo.nodes():
        rendered = render_node(topo, node.name, secrets)
        files = {f.path: f for f in rendered.files}
        assert files[NODE_AGENT].content == AGENT.read_text() and files[NODE_AGENT].permissions == "0755"
        data = push.payload(topo, rendered)
        assert {f["on_change"] for f in data["files"]} <= set(push.ACTIONS)
    # the agent runs the actions in the order the core lists them
    text = AGENT.read_text()
    order = text[text.index("ORDER = ("):text.index(")", text.index("ORDER = ("))]
    assert [a for a in push.ACTIONS] == [p.strip(' "\n') for p in order.split("(", 1)[1].split(",") if p.strip()]


def test_an_unchanged_push_changes_nothing_and_records_the_digests(proxy):
    data = proxy.payload()
    out = proxy.apply(data)
    assert out.returncode == 0, out.stderr
    report = _last_json(out)
    assert report["changed"] == [] and report["actions"] == [] and report["digests"] == push.digests(data)
    assert [c for c in proxy.calls() if not c.startswith("systemctl is-active")] == []
    assert proxy.agent("check").returncode == 0


def test_a_haproxy_change_is_checked_installed_and_reloaded_keeping_owner_and_mode(proxy):
    os.chmod(proxy.file(HAPROXY_CFG), 0o640)  # as the node's own set-up may have left it
    new = proxy.rendered.files[[f.path for f in proxy.rendered.files].index(HAPROXY_CFG)].content + "# changed\n"
    out = proxy.apply(proxy.payload(**{HAPROXY_CFG: new}))
    assert out.returncode == 0, out.stderr
    assert _last_json(out)["actions"] == ["haproxy:reload"]
    assert proxy.file(HAPROXY_CFG).read_text() == new
    assert stat.S_IMODE(proxy.file(HAPROXY_CFG).stat().st_mode) == 0o640
    calls = proxy.calls()
    assert any(c.startswith("haproxy -c -q -f ") for c in calls)
    assert any(c.startswith("systemctl reload haproxy") for c in calls)
    assert not any("restart" in c for c in calls)  # a reload, never a restart
    assert not [p for p in proxy.file(HAPROXY_CFG).parent.iterdir() if p.name.startswith(".node-agent.")]


def test_a_config_haproxy_rejects_is_refused_and_nothing_changes(proxy):
    before = proxy.file(HAPROXY_CFG).read_text()
    out = proxy.apply(proxy.payload(**{HAPROXY_CFG: before + "BROKEN\n", KEEPALIVED_CONF: "# other\n"}))
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("node-agent: refused, nothing changed: /etc/haproxy/haproxy.cfg fails its check")
    assert proxy.file(HAPROXY_CFG).read_text() == before
    assert proxy.file(KEEPALIVED_CONF).read_text() != "# other\n"
    assert not any(c.startswith("systemctl reload") for c in proxy.calls())


@pytest.mark.parametrize("text, why", [
    ("{not json", "does not parse as JSON"),
    (json.dumps({"version": 1, "node": "proxy-region-b-1", "role": "proxy", "files": []}),
     "the payload is for 'proxy-region-b-1', this node is 'proxy-region-a-1'"),
    (json.dumps({"version": 1, "node": "proxy-region-a-1", "role": "proxy",
                 "files": [{"path": "/etc/../root/x", "content": ""}]}), "a file entry is malformed"),
    (json.dumps({"version": 1, "node": "proxy-region-a-1", "role": "proxy",
                 "files": [{"path": "/etc/x", "content": "", "on_change": "reboot"}]}), "unknown action 'reboot'"),
])
def test_bad_payloads_are_refused_with_one_line(proxy, text, why):
    out = proxy.apply(text)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and why in out.stderr, out.stderr
    assert proxy.calls() == []


def test_a_link_in_place_of_a_pushed_file_is_refused(proxy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched\n")
    proxy.file(HAPROXY_CFG).unlink()
    proxy.file(HAPROXY_CFG).symlink_to(elsewhere)
    out = proxy.apply(proxy.payload())
    assert out.returncode == 2 and "is not a regular file on this node (a link?)" in out.stderr
    assert elsewhere.read_text() == "untouched\n"


def test_a_live_galera_setting_is_set_without_a_restart(galera):
    text = galera.file(GALERA_CONF).read_text()
    current = next(line for line in text.splitlines() if line.startswith("max_connections"))
    out = galera.apply(galera.payload(**{GALERA_CONF: text.replace(current, "max_connections = 3000")}))
    assert out.returncode == 0, out.stderr
    assert _last_json(out)["actions"] == ["galera:settings (live: max_connections=3000)"]
    calls = galera.calls()
    assert any("SET GLOBAL max_connections = 3000" in c for c in calls)
    assert not any(c.startswith("systemctl restart") for c in calls)


def test_a_restart_setting_is_refused_while_a_member_is_away_and_rolled_when_whole(galera):
    text = galera.file(GALERA_CONF).read_text()
    assert "evs.suspect_timeout=PT30S" in text  # a provider option: MariaDB takes it at start only
    changed = text.replace("evs.suspect_timeout=PT30S", "evs.suspect_timeout=PT40S")
    size = push.payload(galera.topo, galera.rendered)["health"]["galera_cluster_size"]
    galera.wsrep.write_text(WHOLE.format(size=size - 1))
    out = galera.apply(galera.payload(**{GALERA_CONF: changed}))
    assert out.returncode == 2, out.stderr
    assert f"refusing to restart MariaDB: the cluster is not whole (this node Synced/Primary, {size - 1} of {size}" \
        in out.stderr
    assert galera.file(GALERA_CONF).read_text() == text
    galera.wsrep.write_text(WHOLE.format(size=size))
    data = galera.payload(**{GALERA_CONF: changed})
    data["health"].update(galera_drain_s=0.1, galera_undrain_s=0)  # the proxies' check times, shortened
    out = galera.apply(data)
    assert out.returncode == 0, out.stderr
    assert _last_json(out)["actions"] == ["galera:settings (restart)"]
    calls = galera.calls()
    assert any(c.startswith("systemctl restart mariadb") for c in calls)
    assert "drained while restarting mariadb" in calls  # the proxies had moved its sessions first
    assert not galera.file("/var/lib/keystone-multiregion/galera-drain").exists()


def test_a_galera_setting_mariadb_rejects_is_refused(galera):
    text = galera.file(GALERA_CONF).read_text()
    out = galera.apply(galera.payload(**{GALERA_CONF: text.replace("[galera]", "[galera]\nbogus = 1", 1)}))
    assert out.returncode == 2 and "unknown variable 'bogus=1'" in out.stderr
    assert galera.file(GALERA_CONF).read_text() == text


def test_drift_is_reported_naming_the_file_and_the_repair(proxy):
    assert proxy.apply(proxy.payload()).returncode == 0
    proxy.file(KEEPALIVED_CONF).write_text("hand edited\n")
    out = proxy.agent("check")
    assert out.returncode == 1
    assert f"proxy-region-a-1: 1 file(s) differ from the last push: {KEEPALIVED_CONF}" in out.stderr
    assert "pulumi up --target <URN of files-proxy-region-a-1> --replace" in out.stderr


def test_memcached_is_not_restarted_while_no_other_memcached_answers(tmp_path, topo, secrets, monitor):
    node = Node(tmp_path, topo, secrets, "memcached-region-a-1", monitor)
    data = node.payload(**{"/etc/memcached.conf": "-m 256\n"})
    data["health"]["peers"] = ["127.0.0.1"]  # its peers' port answers nothing on loopback here
    data["health"]["ports"]["memcached"] = 1
    out = node.apply(data)
    assert out.returncode == 2 and "refusing to restart memcached: no other memcached node of the region answers" \
        in out.stderr
    assert node.file("/etc/memcached.conf").read_text() != "-m 256\n"


def _with_region_d(topo_data: dict, weight: int = 2) -> dict:
    topo_data["regions"].append({"name": "region-d", "index": 4, "cidr": "10.10.4.0/24", "external_network": "public",
                                 "public_hostname": "identity.region-d.example.com",
                                 "roles": {"galera": {"count": 1, "weight": weight}}})
    return topo_data


def test_a_region_added_reaches_a_running_member_without_a_restart(galera, secrets):
    """The new peer list waits for the member's next start, the new region's database account
    is created, and the push does not wait for the new region's member (not created yet)."""
    from helpers import example
    from keystone_multiregion import pki
    from keystone_multiregion.topology import load_topology
    from keystone_multiregion.roles.galera import DB_USERS
    new = load_topology(_with_region_d(example()))
    data = push.payload(new, render_node(new, galera.name, pki.extend_secrets(new, secrets)))
    assert data["health"]["galera_cluster_size"] == 10  # the cluster has 9 members until region-d's joins
    out = galera.apply(galera.faked(data))
    assert out.returncode == 0, out.stderr
    actions = _last_json(out)["actions"]
    assert actions == ["galera:settings (live: wsrep_cluster_address at the next start)", "galera:users"]
    assert "10.10.4.0/255.255.255.0" in galera.file(DB_USERS).read_text()
    assert "galera-node init-cluster" in galera.calls()
    assert not any(c.startswith("systemctl restart") for c in galera.calls())


def test_a_vote_changed_is_set_live(galera):
    text = galera.file(GALERA_CONF).read_text()
    assert "pc.weight=1" in text
    out = galera.apply(galera.payload(**{GALERA_CONF: text.replace("pc.weight=1", "pc.weight=3")}))
    assert out.returncode == 0, out.stderr
    assert _last_json(out)["actions"] == ["galera:settings (live: pc.weight=3)"]
    assert any("SET GLOBAL wsrep_provider_options = 'pc.weight=3'" in c for c in galera.calls())
    assert not any(c.startswith("systemctl restart") for c in galera.calls())


def test_a_leaving_member_shuts_down_cleanly_unless_it_is_the_last(galera):
    galera.wsrep.write_text(WHOLE.format(size=1))
    out = galera.agent("leave")
    assert out.returncode == 2 and "the cluster's last member" in out.stderr
    assert not any(c.startswith("systemctl stop mariadb") for c in galera.calls())
    galera.wsrep.write_text(WHOLE.format(size=9))
    out = galera.agent("leave")
    assert out.returncode == 0, out.stderr
    assert "left the cluster (it had 9 members)" in _last_json(out)["left"]
    assert any(c.startswith("systemctl stop mariadb") for c in galera.calls())


def test_a_stateless_node_has_nothing_to_leave(proxy):
    out = proxy.agent("leave")
    assert out.returncode == 0 and "nothing to leave" in _last_json(out)["left"]
    assert proxy.calls() == []


def test_the_arbitrator_takes_a_new_peer_list_without_a_restart_and_other_changes_with_one(tmp_path, monitor):
    """garbd learns its peers from the group, like a member: a region added or removed changes
    only GALERA_NODES, and restarting garbd would take its vote away for nothing."""
    from test_proxy import witness_topology
    from keystone_multiregion import pki
    from keystone_multiregion.topology import load_topology
    topo = load_topology(witness_topology())
    arb = Node(tmp_path, topo, pki.generate_secrets(topo), "arbitrator-witness-1", monitor)
    text = arb.file("/etc/default/garb").read_text()
    peers = next(line for line in text.splitlines() if line.startswith("GALERA_NODES="))
    out = arb.apply(arb.payload(**{"/etc/default/garb": text.replace(peers, peers[:-1] + ' 10.10.4.42:4567"')}))
    assert out.returncode == 0, out.stderr
    assert _last_json(out)["actions"] == ["garbd:restart (not needed: GALERA_NODES at the next start)"]
    assert "10.10.4.42:4567" in arb.file("/etc/default/garb").read_text()
    assert not any(c.startswith("systemctl restart") for c in arb.calls())
    out = arb.apply(arb.payload(**{"/etc/default/garb": text.replace(
        'GALERA_OPTIONS="', 'GALERA_OPTIONS="evs.send_window=256;')}))  # an option garbd reads at start
    assert out.returncode == 0, out.stderr
    assert _last_json(out)["actions"] == ["garbd:restart"]
    assert any(c.startswith("systemctl restart garb") for c in arb.calls())


# --- node-agent metrics ----------------------------------------------------------------------

FAKE_IP = """#!/bin/sh
# `ip -o -4 addr show` as the node would answer it: the addresses in $FAKE_IP_ADDRS
i=2
for a in $FAKE_IP_ADDRS; do echo "$i: eth0    inet $a/24 brd 10.10.1.255 scope global eth0"; i=$((i+1)); done
"""


def _metrics(text: str) -> dict[str, float]:
    """{'name{labels}': value} of a Prometheus text file (comments skipped)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_metrics_of_a_proxy_say_what_it_holds_what_drifted_and_when_its_certificates_expire(proxy, topo):
    """node-agent metrics on a proxy's tree, after a push: the VIPs `ip` shows it holding, a
    pushed file changed by hand counted as drift, and the expiry of each pushed certificate
    (the first certificate of the file, as the file's own notAfter says)."""
    from cryptography import x509

    from keystone_multiregion.roles.node import METRICS_DIR
    from keystone_multiregion.roles.proxy import PEER_CA, PUBLIC_PEM
    assert proxy.apply(proxy.payload()).returncode == 0
    vips = topo.vips("region-a")
    held = [v for v in vips if v.master == "proxy-region-a-1"]
    (proxy.root.parent / "bin" / "ip").write_text(FAKE_IP)
    os.chmod(proxy.root.parent / "bin" / "ip", 0o755)
    proxy.env["FAKE_IP_ADDRS"] = " ".join(["10.10.1.21"] + [v.address for v in held])
    proxy.file(HAPROXY_CFG).write_text(proxy.file(HAPROXY_CFG).read_text() + "# changed by hand\n")
    out = proxy.agent("metrics")
    assert out.returncode == 0, out.stderr
    text = proxy.file(f"{METRICS_DIR}/keystone-multiregion.prom").read_text()
    m = _metrics(text)
    assert m["keystone_multiregion_files_drifted"] == 1 and m["keystone_multiregion_push_recorded"] == 1
    for v in vips:
        assert m[f'keystone_multiregion_vip_held{{address="{v.address}",vip="{v.name}"}}'] == (1 if v in held else 0)
    assert 0 < len(held) < len(vips)
    for pem in (PUBLIC_PEM, PEER_CA):
        if not proxy.file(pem).exists():
            continue
        cert = x509.load_pem_x509_certificate(proxy.file(pem).read_bytes())
        expected = cert.not_valid_after_utc.timestamp()
        assert m[f'keystone_multiregion_certificate_expiry_timestamp_seconds{{path="{pem}"}}'] == expected
    assert "# TYPE keystone_multiregion_vip_held gauge" in text
    # The file is whole and readable by node_exporter's user.
    assert stat.S_IMODE(os.stat(proxy.file(f"{METRICS_DIR}/keystone-multiregion.prom")).st_mode) == 0o644
    # Put back as pushed: no drift.
    proxy.file(HAPROXY_CFG).write_text(next(f.content for f in proxy.rendered.files if f.path == HAPROXY_CFG))
    assert proxy.agent("metrics").returncode == 0
    assert _metrics(proxy.file(f"{METRICS_DIR}/keystone-multiregion.prom").read_text())[
        "keystone_multiregion_files_drifted"] == 0


def test_metrics_of_a_memcached_node_answering_or_not(tmp_path, topo, secrets, monitor):
    """memcached_up follows what answers at the node's address (here loopback: the facts are
    pointed there, so the test never reaches outside this machine)."""
    import socket

    from keystone_multiregion.render import FACTS_PATH
    from keystone_multiregion.roles.node import METRICS_DIR
    node = Node(tmp_path, topo, secrets, "memcached-region-a-1", monitor)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    facts = json.loads(node.file(FACTS_PATH).read_text())
    facts.update(address="127.0.0.1", ports={**facts["ports"], "memcached": server.getsockname()[1]})
    node.file(FACTS_PATH).write_text(json.dumps(facts))

    def up() -> float:
        assert node.agent("metrics").returncode == 0
        m = _metrics(node.file(f"{METRICS_DIR}/keystone-multiregion.prom").read_text())
        assert m["keystone_multiregion_push_recorded"] == 0  # nothing pushed yet
        assert "keystone_multiregion_vip_held" not in " ".join(m)
        return m["keystone_multiregion_memcached_up"]
    assert up() == 0  # bound, not listening: refused
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        with conn:
            conn.recv(64)
            conn.sendall(b"VERSION 1.6.18\r\n")
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        assert up() == 1
    finally:
        thread.join(timeout=10)
        server.close()


def test_every_node_runs_node_exporter_and_the_metrics_timer(topo, secrets):
    import importlib.util

    import yaml

    from keystone_multiregion.roles.node import METRICS_DIR, METRICS_TIMER, NODE_EXPORTER_DEFAULTS
    spec = importlib.util.spec_from_file_location("node_agent", AGENT)
    agent = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agent)
    assert agent.METRICS_DIR == METRICS_DIR  # what node-agent writes is what node_exporter reads
    for node in topo.nodes():
        rendered = render_node(topo, node.name, secrets)
        files = {f.path: f for f in rendered.files}
        args = files[NODE_EXPORTER_DEFAULTS].content
        assert f"--web.listen-address={node.address}:9100" in args
        assert f"--collector.textfile.directory={METRICS_DIR}" in args
        assert f"OnUnitActiveSec={topo.monitoring.node_metrics_interval_s}s" in files[METRICS_TIMER].content
        doc = yaml.safe_load(rendered.user_data)
        assert "prometheus-node-exporter" in doc["packages"]
        assert doc["runcmd"][-1] == ["systemctl", "start", "keystone-multiregion-metrics.timer"]
        actions = {f["path"]: f["on_change"] for f in push.payload(topo, rendered)["files"]}
        assert actions[NODE_EXPORTER_DEFAULTS] == "node-exporter:restart"
        assert actions[METRICS_TIMER] == "systemd:daemon-reload"


def test_metrics_of_the_backup_node_say_when_its_last_good_backup_was(tmp_path, topo, secrets, monitor):
    """On a region's backup node: nothing backed up yet counts from the credentials' push; a
    good run sets the last success; a failed run says so and keeps the last success."""
    from keystone_multiregion.roles.backup import BACKUP_SECRETS, BACKUP_STATUS
    from keystone_multiregion.roles.node import METRICS_DIR
    node = Node(tmp_path, topo, secrets, "galera-region-b-1", monitor)
    prom = node.file(f"{METRICS_DIR}/keystone-multiregion.prom")

    def metrics() -> dict:
        assert node.agent("metrics").returncode == 0
        return _metrics(prom.read_text())
    pushed = os.stat(node.file(BACKUP_SECRETS)).st_mtime
    m = metrics()
    assert m["keystone_multiregion_backup_node"] == 1
    assert m["keystone_multiregion_backup_counted_from_timestamp_seconds"] == round(pushed)
    assert "keystone_multiregion_backup_last_success_timestamp_seconds" not in m
    assert "keystone_multiregion_backup_last_run_ok" not in m
    status = node.file(BACKUP_STATUS)
    status.parent.mkdir(parents=True, exist_ok=True)
    status.write_text(json.dumps({"last_result": "ok", "last_success": 1765000000.4, "last_run": 1765000000.4}))
    m = metrics()
    assert m["keystone_multiregion_backup_last_success_timestamp_seconds"] == 1765000000
    assert m["keystone_multiregion_backup_counted_from_timestamp_seconds"] == 1765000000
    assert m["keystone_multiregion_backup_last_run_ok"] == 1
    status.write_text(json.dumps({"last_result": "failed: swift upload: 401", "last_success": 1765000000,
                                  "last_run": 1765003600}))
    m = metrics()
    assert m["keystone_multiregion_backup_last_run_ok"] == 0
    assert m["keystone_multiregion_backup_last_success_timestamp_seconds"] == 1765000000
    # A Galera node that is not its region's backup node reports only that.
    other = Node(tmp_path / "other", topo, secrets, "galera-region-b-2", monitor)
    assert other.agent("metrics").returncode == 0
    m = _metrics(other.file(f"{METRICS_DIR}/keystone-multiregion.prom").read_text())
    assert m["keystone_multiregion_backup_node"] == 0
    assert not [k for k in m if "backup_" in k and "backup_node" not in k]


# -- a replica region's replica: replica:restart ---------------------------------------------

@pytest.fixture(scope="module")
def replica_topo():
    from helpers import with_replica_region
    from keystone_multiregion import pki
    from keystone_multiregion.topology import load_topology
    topo = load_topology(with_replica_region())
    return topo, pki.generate_secrets(topo)


@pytest.fixture
def replica(tmp_path, replica_topo, monitor):
    topo, secrets = replica_topo
    return Node(tmp_path, topo, secrets, "replica-region-r-1", monitor)


@pytest.fixture
def other_replica():
    """The region's other replica's health check (loopback): answers `code[0]`."""
    code = [200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(code[0])
            self.end_headers()

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield code, server.server_address[1]
    server.shutdown()
    server.server_close()


def _replica_payload(node, port, **changed):
    data = node.payload(**changed)
    data["health"].update(peers=["127.0.0.1"], peer_names={"127.0.0.1": "replica-region-r-2"})
    data["health"]["ports"]["galera_health"] = port
    return data


def test_a_replicas_push_knows_its_other_replica_and_their_health_port(replica, replica_topo):
    from keystone_multiregion.roles.galera import GALERA_CONF as CNF, TLS_PATHS
    topo, _ = replica_topo
    data = push.payload(topo, replica.rendered)
    other = topo.node("replica-region-r-2")
    assert data["health"]["peers"] == [other.address]
    assert data["health"]["peer_names"] == {other.address: other.name}
    assert data["health"]["ports"]["galera_health"] == 9200
    actions = {f["path"]: f["on_change"] for f in data["files"]}
    assert {p for p, a in actions.items() if a == "replica:restart"} == {CNF, REPLICA_CONFIG, *TLS_PATHS.values()}


def test_a_replica_restart_is_refused_while_no_other_replica_is_healthy_and_rolled_when_one_is(replica,
                                                                                                other_replica):
    code, port = other_replica
    text = replica.file(GALERA_CONF).read_text()
    changed = text + "# changed\n"
    code[0] = 503  # the other replica does not replicate (or lags beyond max_lag_s)
    out = replica.apply(_replica_payload(replica, port, **{GALERA_CONF: changed}))
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("node-agent: refused, nothing changed: refusing to restart MariaDB on this replica: "
                           "no other replica of the region is healthy (replica-region-r-2 (127.0.0.1): HTTP 503)")
    assert "Bring the other replica back first (`replica-node status` on it" in line
    assert replica.file(GALERA_CONF).read_text() == text
    assert not any(c.startswith("systemctl restart") for c in replica.calls())
    # Its health port does not answer at all: refused as well, and said so.
    out = replica.apply(_replica_payload(replica, 1, **{GALERA_CONF: changed}))
    assert out.returncode == 2 and "replica-region-r-2 (127.0.0.1): no answer" in out.stderr
    code[0] = 200
    out = replica.apply(_replica_payload(replica, port, **{GALERA_CONF: changed}))
    assert out.returncode == 0, out.stderr
    assert _last_json(out)["actions"] == ["replica:restart"]
    assert replica.file(GALERA_CONF).read_text() == changed
    calls = [c.split(" <<")[0] for c in replica.calls() if not c.startswith("replica-node status")]
    assert calls == ["systemctl restart mariadb", "replica-node start --no-server --timeout 600",
                     "systemctl restart replica-health", "systemctl restart replica-watch"]
    assert "replica-node status" in replica.calls()  # waited until it says healthy


def test_a_new_replica_json_keeps_mariadb_running(replica, other_replica):
    _, port = other_replica
    cfg = json.loads(replica.file(REPLICA_CONFIG).read_text())
    cfg["max_lag_s"] = 30
    out = replica.apply(_replica_payload(replica, port, **{REPLICA_CONFIG: json.dumps(cfg)}))
    assert out.returncode == 0, out.stderr
    assert _last_json(out)["actions"] == ["replica:restart (replica.json only: MariaDB kept running)"]
    calls = [c.split(" <<")[0] for c in replica.calls() if not c.startswith("replica-node status")]
    assert calls == ["replica-node start --no-server --timeout 600", "systemctl restart replica-health",
                     "systemctl restart replica-watch"]


def test_a_replica_that_does_not_replicate_after_its_restart_fails_the_push(replica, other_replica):
    _, port = other_replica
    replica.replica.write_text(json.dumps({"healthy": False, "io_running": "Connecting", "sql_running": "Yes",
                                           "last_io_error": "TLS: certificate verify failed"}))
    data = _replica_payload(replica, port, **{GALERA_CONF: replica.file(GALERA_CONF).read_text() + "# x\n"})
    data["health"]["replica_settle_s"] = 1  # the bound, shortened
    out = replica.apply(data)
    assert out.returncode == 1
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("node-agent: failed: replica-region-r-1: files installed, but this replica does not "
                           "replicate within 1s after the restart: `replica-node status` says ")
    assert "certificate verify failed" in line


def test_node_agent_health_of_a_replica_is_replica_node_status(replica):
    out = replica.agent("health", "--timeout", "0")
    assert out.returncode == 0 and _last_json(out)["healthy"] is True
    replica.replica.write_text(json.dumps({"healthy": False}))
    out = replica.agent("health", "--timeout", "0")
    assert out.returncode == 1 and _last_json(out)["healthy"] is False
