"""The proxy layer as rendered: haproxy.cfg and keepalived.conf, parsed, and checked by the
real tools (`haproxy -c`, `keepalived -t`).

How the tools see the files: the rendered files of a node are written under a temporary
root (`<tmp>/etc/haproxy/...`) and every absolute path of a file that HAProxy reads at
parse time (the certificate and CA files) is rewritten to point there; nothing else
changes. `haproxy -c` parses, loads certificates and resolves users but binds nothing,
chroots nowhere and opens no socket, so it needs no root. keepalived checks that
`interface eth0` exists: `keepalived -t` runs inside a new network namespace (`unshare -n`;
without root `unshare -rn`, through a user namespace) holding a veth named eth0, which is
what the VM has, whatever the machine running the tests calls its interfaces.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import example, five_regions, with_replica_region
from keystone_multiregion import pki
from keystone_multiregion.render import render_node
from keystone_multiregion.roles.proxy import (FORWARDED_HEADER, HAPROXY_CFG, HAPROXY_DOWN_DIR, HAPROXY_DOWN_FILE,
                                              HAPROXY_DROPIN, KEEPALIVED_CONF, NODE_HEADER,
                                              PEER_CA, PROXY, PUBLIC_PEM, REGION_HEADER, STATS_SOCKET,
                                              SYSTEM_CA_BUNDLE, galera_servers, keystone_backups, local_database,
                                              ring_after)
from keystone_multiregion.security import PORTS, remote_prefixes, security_rules
from keystone_multiregion.topology import load_topology

LAB_TOPOLOGY = Path(__file__).resolve().parent.parent / "lab" / "topology.yaml"


def witness_topology() -> dict:
    """Two serving regions and a witness site that hosts only the arbitrator."""
    data = example()
    data["regions"] = data["regions"][:2] + [
        {"name": "witness", "index": 9, "cidr": "10.10.9.0/24", "external_network": "public", "witness": True}]
    data["arbitrator"] = {"region": "witness"}
    data["defaults"]["galera"] = {"count": 1, "flavor": "m1.large", "vcpus": 4, "volume_gb": 20}
    return data


def lab_topology() -> dict:
    import yaml
    return yaml.safe_load(LAB_TOPOLOGY.read_text())


def lab_replica_topology() -> dict:
    import yaml
    return yaml.safe_load((LAB_TOPOLOGY.parent / "topology-region-r.yaml").read_text())


TOPOLOGIES = {"example": example, "five_regions": five_regions, "witness": witness_topology, "lab": lab_topology,
              # A replica region (#15): its proxies route writes to a core region.
              "replica": with_replica_region, "lab_replica": lab_replica_topology}


@pytest.fixture(scope="module", params=sorted(TOPOLOGIES))
def case(request):
    topo = load_topology(TOPOLOGIES[request.param]())
    return request.param, topo, pki.generate_secrets(topo)


def _files(rendered) -> dict:
    return {f.path: f for f in rendered.files}


# -- parsers ------------------------------------------------------------------------------

def parse_haproxy(text: str) -> dict[str, list[str]]:
    """{"global": [...], "defaults": [...], "frontend NAME": [...], "backend NAME": [...]}:
    each section's lines, comments and blank lines removed, whitespace collapsed."""
    sections: dict[str, list[str]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            current = " ".join(line.split())
            assert current not in sections, f"section {current} twice"
            sections[current] = []
        else:
            assert current is not None, f"directive outside a section: {line}"
            sections[current].append(" ".join(line.split()))
    return sections


def servers(section: list[str]) -> list[dict]:
    out = []
    for line in section:
        if line.startswith("server "):
            _, name, addr, *params = line.split()
            host, port = addr.rsplit(":", 1)
            out.append({"name": name, "host": host, "port": int(port), "params": params,
                        "backup": "backup" in params})
    return out


def binds(section: list[str]) -> list[tuple[str, int, list[str]]]:
    out = []
    for line in section:
        if line.startswith("bind "):
            _, addr, *params = line.split()
            host, port = addr.rsplit(":", 1)
            out.append((host, int(port), params))
    return out


def param(params: list[str], key: str) -> str | None:
    return params[params.index(key) + 1] if key in params else None


def parse_keepalived(text: str) -> list[tuple[str, object]]:
    """keepalived's block syntax as nested (keyword, value) lists: `name { ... }` gives
    (name, [children]); a plain line gives (first word, rest of the line)."""
    tokens = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            tokens.append(line)
    stack: list[list] = [[]]
    for line in tokens:
        if line.endswith("{"):
            block: list = []
            stack[-1].append((line[:-1].strip(), block))
            stack.append(block)
        elif line == "}":
            stack.pop()
            assert stack, "unbalanced braces"
        else:
            key, _, value = line.partition(" ")
            stack[-1].append((key, value.strip()))
    assert len(stack) == 1, "unclosed block"
    return stack[0]


def block(items, name: str):
    found = [v for k, v in items if k == name]
    assert len(found) == 1, f"{name}: {len(found)} blocks"
    return found[0]


def values(items, key: str) -> list:
    return [v for k, v in items if k == key]


def instances(text: str) -> dict[str, list]:
    return {k.split()[1]: v for k, v in parse_keepalived(text) if k.startswith("vrrp_instance ")}


# -- haproxy.cfg --------------------------------------------------------------------------

def test_every_proxy_binds_only_its_regions_vips(case):
    _, topo, secrets = case
    for proxy in topo.nodes(role="proxy"):
        cfg = parse_haproxy(_files(render_node(topo, proxy.name, secrets))[HAPROXY_CFG].content)
        public = {v.address for v in topo.vips(proxy.region, "public")}
        internal = {v.address for v in topo.vips(proxy.region, "internal")}
        assert {(h, p) for h, p, _ in binds(cfg["frontend keystone_public"])} == {(a, 443) for a in public}
        for _, _, params in binds(cfg["frontend keystone_public"]):
            assert params[:2] == ["ssl", "crt"] and param(params, "crt") == PUBLIC_PEM  # TLS ends here
        assert {(h, p) for h, p, _ in binds(cfg["frontend keystone_internal"])} == {(a, 5000) for a in internal}
        assert {(h, p) for h, p, _ in binds(cfg["frontend galera"])} == {(a, 3306) for a in internal}
        assert binds(cfg["frontend monitor"]) == [("127.0.0.1", 8404, [])]
        # Prometheus scrapes the node's own address (its security group: monitoring.cidr only).
        assert binds(cfg["frontend metrics"]) == [(proxy.address, 8405, [])]
        every = [b for name, lines in cfg.items() for b in binds(lines)]
        assert len(every) == len(public) + 2 * len(internal) + 2
        assert not [b for b in every if b[0] in ("0.0.0.0", "*", "", "::", "[::]")]
        for host, _, _ in every:
            assert host in public | internal | {proxy.address} or ipaddress.ip_address(host).is_loopback


def test_keystone_backend_local_nodes_then_every_other_region_as_backup(case):
    name, topo, secrets = case
    for proxy in topo.nodes(role="proxy"):
        files = _files(render_node(topo, proxy.name, secrets))
        cfg = parse_haproxy(files[HAPROXY_CFG].content)
        # The backups' CA: the deployment's own (when its secrets carry one), else the system's.
        ca_file = PEER_CA if PEER_CA in files else SYSTEM_CA_BUNDLE
        backend = cfg["backend keystone"]
        srv = servers(backend)
        local = [s for s in srv if not s["backup"]]
        assert [(s["name"], s["host"], s["port"]) for s in local] == \
            [(n.name, n.address, 5000) for n in topo.nodes(proxy.region, "keystone")]
        assert all("check" in s["params"] for s in srv)
        backups = [s for s in srv if s["backup"]]
        expected = [(v.name, v.address) for r in ring_after(topo, proxy.region) for v in topo.vips(r, "public")]
        assert [(s["name"], s["host"]) for s in backups] == expected
        assert {s["port"] for s in backups} == {443}
        serving = [r for r in topo.regions if not r.witness]
        assert {r for r in ring_after(topo, proxy.region)} == {r.name for r in serving} - {proxy.region}
        vip_region = {v.address: topo.region(v.region) for r in serving for v in topo.vips(r.name)}
        for s in backups:
            region = vip_region[s["host"]]
            # TLS to the other region, its certificate verified for its public host name.
            assert param(s["params"], "verify") == "required"
            assert param(s["params"], "ca-file") == ca_file
            assert param(s["params"], "sni") == f"str({region.public_hostname})"
            assert param(s["params"], "verifyhost") == region.public_hostname
            assert param(s["params"], "check-sni") == region.public_hostname
            assert "ssl" in s["params"]
        assert "option httpchk" in backend
        assert any(line.startswith("http-check send meth GET uri /healthcheck ") for line in backend)
        assert "http-check expect status 200" in backend
        assert "option allbackups" in backend
        # Idempotent requests survive a dying backend: retried, each time on another server.
        assert "retries 3" in cfg["defaults"] and "option redispatch 1" in cfg["defaults"]
        assert "retry-on conn-failure empty-response response-timeout 502 503 504" in backend
        assert any(line.startswith("http-request disable-l7-retry unless METH_GET") for line in backend)
        assert any("observe layer4" in line and "on-error mark-down" in line for line in backend)
        # A forwarded request is served locally only: no loop between regions.
        assert f"http-request set-header {FORWARDED_HEADER} {proxy.region}" in backend
        local_only = cfg["backend keystone_local"]
        assert [s["name"] for s in servers(local_only)] == [s["name"] for s in local]
        for fe in ("frontend keystone_public", "frontend keystone_internal"):
            assert f"use_backend keystone_local if {{ req.hdr({FORWARDED_HEADER}) -m found }}" in cfg[fe]
            assert "default_backend keystone" in cfg[fe]


def test_what_a_proxy_reaches_is_admitted_and_crosses_regions_over_tls(case):
    """Every server a proxy's HAProxy contacts (and its check port) is admitted by the
    target's security group; Keystone in another region only through its public TLS
    endpoint (443, certificate verified), never its plain-HTTP 5000, which the security
    groups keep to the region's own network."""
    _, topo, secrets = case
    owner = {n.address: (n.region, n.role) for n in topo.nodes()}
    owner.update({v.address: (r.name, "proxy") for r in topo.regions for v in topo.vips(r.name)})  # VIP ports
    rules = {r.name: security_rules(topo, r.name) for r in topo.regions}
    for proxy in topo.nodes(role="proxy"):
        cfg = parse_haproxy(_files(render_node(topo, proxy.name, secrets))[HAPROXY_CFG].content)
        source = ipaddress.ip_address(proxy.address)
        for section in (s for s in cfg if s.startswith("backend ")):
            for srv in servers(cfg[section]):
                region, group = owner[srv["host"]]
                for port in {srv["port"], int(param(srv["params"], "port") or srv["port"])}:
                    assert any(r.group == group and r.protocol == "tcp" and r.port == port
                               and any(source in ipaddress.ip_network(p) for p in remote_prefixes(topo, region, r))
                               for r in rules[region]), \
                        f"{proxy.name} {section} {srv['name']}: {group} in {region} does not admit tcp {port}"
                if section.startswith("backend keystone") and region != proxy.region:
                    assert srv["port"] == PORTS["https"] and "ssl" in srv["params"], srv
                    assert param(srv["params"], "verify") == "required", srv


def test_no_backup_points_at_a_witness_site():
    topo = load_topology(witness_topology())
    secrets = pki.generate_secrets(topo)
    assert topo.region("witness").witness and topo.vips("witness") == ()
    for proxy in topo.nodes(role="proxy"):
        text = _files(render_node(topo, proxy.name, secrets))[HAPROXY_CFG].content
        assert "witness" not in text and "10.10.9." not in text
        cfg = parse_haproxy(text)
        other = "region-b" if proxy.region == "region-a" else "region-a"
        assert {s["host"] for s in servers(cfg["backend keystone"]) if s["backup"]} == \
            {v.address for v in topo.vips(other, "public")}
        # The arbitrator holds no data: never a database server.
        assert [s["name"] for s in servers(cfg["backend galera"])] == [f"galera-{proxy.region}-1", f"galera-{other}-1"]


def test_database_frontend_one_writer_then_backups_local_first(case):
    _, topo, secrets = case
    for proxy in topo.nodes(role="proxy"):
        cfg = parse_haproxy(_files(render_node(topo, proxy.name, secrets))[HAPROXY_CFG].content)
        backend = cfg["backend galera"]
        assert "mode tcp" in backend and "mode tcp" in cfg["frontend galera"]
        srv = servers(backend)
        writers = [s for s in srv if not s["backup"]]
        # A replica region's database nodes are its replicas, and it never falls back to the core's.
        local = local_database(topo, proxy.region)
        assert [(s["name"], s["host"], s["port"]) for s in writers] == [(local[0].name, local[0].address, 3306)]
        others = [] if topo.region(proxy.region).replica else ring_after(topo, proxy.region)
        expected = list(local) + [n for r in others for n in topo.nodes(r, "galera")]
        assert [s["name"] for s in srv] == [n.name for n in expected]
        assert [s["name"] for s in srv] == [s["name"] for s in galera_servers(topo, proxy.region)]
        for s in srv:
            assert param(s["params"], "check") == "port" and param(s["params"], "port") == "9200"
        assert "on-marked-up" in writers[0]["params"] and param(writers[0]["params"], "on-marked-up") == \
            "shutdown-backup-sessions"
        default = next(line for line in backend if line.startswith("default-server "))
        assert "on-marked-down shutdown-sessions" in default and "observe layer4" in default
        # Health from Galera's own check: a non-Primary node answers 503 and is never chosen.
        assert "option httpchk" in backend and "http-check expect status 200" in backend
        assert "option allbackups" not in backend  # one node at a time takes the writes
        # The degraded path (no Primary node reachable at all) is local nodes only.
        assert "use_backend galera_degraded if { nbsrv(galera) eq 0 }" in cfg["frontend galera"]
        assert [(s["name"], s["backup"]) for s in servers(cfg["backend galera_degraded"])] == \
            [(n.name, i > 0) for i, n in enumerate(local)]


def test_backups_spread_over_the_regions_in_ring_order():
    topo = load_topology(five_regions())
    assert ring_after(topo, "fra") == ["ams", "lon", "par", "waw"]
    assert ring_after(topo, "lon") == ["par", "waw", "fra", "ams"]
    first_remote = {}
    for r in topo.regions:
        first_remote[r.name] = galera_servers(topo, r.name)[1]["region"]
    # Each region's first remote database backup is a different region.
    assert len(set(first_remote.values())) == len(topo.regions)


def test_stats_socket_and_timeouts(topo, secrets):
    cfg = parse_haproxy(_files(render_node(topo, "proxy-region-a-1", secrets))[HAPROXY_CFG].content)
    assert any(line.startswith(f"stats socket {STATS_SOCKET} ") for line in cfg["global"])
    timeouts = {line.split()[1]: line.split()[2] for line in cfg["defaults"] if line.startswith("timeout ")}
    assert timeouts["connect"] == "2s" and timeouts["check"] == "2s"
    assert {"client", "server", "http-request", "http-keep-alive", "queue"} <= set(timeouts)
    assert "monitor-uri /healthz" in cfg["frontend monitor"]


# -- keepalived.conf ----------------------------------------------------------------------

def test_keepalived_one_instance_per_vip_masters_rotate(case):
    _, topo, secrets = case
    for region in (r.name for r in topo.regions):
        proxies = topo.nodes(region, "proxy")
        vips = topo.vips(region)
        if not proxies:
            assert vips == ()
            continue
        seen: dict[str, dict[str, tuple[str, int]]] = {v.name: {} for v in vips}
        for proxy in proxies:
            text = _files(render_node(topo, proxy.name, secrets))[KEEPALIVED_CONF].content
            inst = instances(text)
            assert sorted(inst) == sorted(v.name for v in vips)
            for vip in vips:
                body = inst[vip.name]
                assert values(body, "virtual_router_id") == [str(vip.vrid)]
                assert values(body, "interface") == ["eth0"]
                assert values(body, "unicast_src_ip") == [proxy.address]
                assert [k for k, _ in block(body, "unicast_peer")] == [p.address for p in proxies if p != proxy]
                auth = dict(block(body, "authentication"))
                assert auth == {"auth_type": "PASS", "auth_pass": secrets["vrrp_password"]}
                assert len(secrets["vrrp_password"]) <= 8  # PASS uses at most 8 characters
                prefix = ipaddress.ip_network(topo.region(region).cidr).prefixlen
                assert [k + " " + v for k, v in block(body, "virtual_ipaddress")] == \
                    [f"{vip.address}/{prefix} dev eth0"]
                assert [k for k, _ in block(body, "track_script")] == ["haproxy"]
                state, priority = values(body, "state")[0], int(values(body, "priority")[0])
                seen[vip.name][proxy.name] = (state, priority)
        for vip in vips:
            states = seen[vip.name]
            assert [p for p, (s, _) in states.items() if s == "MASTER"] == [vip.master]
            prios = [pr for _, pr in states.values()]
            assert max(prios) == states[vip.master][1] and len(set(prios)) == len(prios)
        # Every proxy is the master of some address: both carry traffic.
        assert {v.master for v in vips} == {p.name for p in proxies}


def test_keepalived_gives_up_addresses_when_haproxy_dies(topo, secrets):
    text = _files(render_node(topo, "proxy-region-c-2", secrets))[KEEPALIVED_CONF].content
    items = parse_keepalived(text)
    script = block(items, "vrrp_script haproxy")
    assert values(script, "script") == ['"/usr/bin/curl -fsS -o /dev/null --max-time 1 http://127.0.0.1:8404/healthz"']
    # No weight: a failing script puts the instances in FAULT (they release the VIPs).
    assert values(script, "weight") == [] and values(script, "fall") == ["2"]
    g = dict(block(items, "global_defs"))
    assert g["router_id"] == "proxy-region-c-2" and "enable_script_security" in g and g["script_user"] == "root"
    assert "vrrp_check_unicast_src" in g


def test_keepalived_tracks_the_file_systemd_writes_when_haproxy_ends(topo, secrets, tmp_path):
    """A HAProxy whose process ended gives its addresses up at once, not after two failed
    health checks: haproxy.service's drop-in writes 1 (ExecStopPost) or 0 (ExecStartPost) to
    the file every VRRP instance tracks with weight 0 (a non-zero value is FAULT)."""
    from lab.service import exec_lines
    rendered = render_node(topo, "proxy-region-a-1", secrets)
    files = _files(rendered)
    items = parse_keepalived(files[KEEPALIVED_CONF].content)
    track = block(items, "track_file haproxy_down")
    assert values(track, "file") == [f'"{HAPROXY_DOWN_FILE}"']
    assert values(track, "weight") == ["0"] and values(track, "init_file") == ["0"]
    for name, inst in instances(files[KEEPALIVED_CONF].content).items():
        assert [k for k, _ in block(inst, "track_file")] == ["haproxy_down"], name
        assert [k for k, _ in block(inst, "track_script")] == ["haproxy"], name  # a hung HAProxy
    dropin = files[HAPROXY_DROPIN]
    assert dropin.permissions == "0644"
    assert PROXY.on_change[HAPROXY_DROPIN] == "systemd:daemon-reload"
    path = tmp_path / "haproxy.conf"
    path.write_text(dropin.content)
    assert "[Service]" in dropin.content.splitlines()
    for key, value in (("ExecStopPost", "1"), ("ExecStartPost", "0")):
        (argv,) = exec_lines(str(path), key)
        assert argv[:2] == ["/bin/sh", "-c"] and HAPROXY_DOWN_FILE in argv[2]
        # The command itself, on a scratch path instead of /run: it creates the directory
        # and writes the value keepalived reads.
        scratch = tmp_path / key / "haproxy-down"
        subprocess.run(["/bin/sh", "-c", argv[2].replace(HAPROXY_DOWN_DIR, str(scratch.parent))], check=True)
        assert scratch.read_text() == f"{value}\n"


# -- files, permissions, cloud-config -----------------------------------------------------

def test_files_permissions_and_cloud_config(topo, secrets):
    import yaml
    rendered = render_node(topo, "proxy-region-a-2", secrets)
    files = _files(rendered)
    assert files[PUBLIC_PEM].permissions == "0600"
    assert files[KEEPALIVED_CONF].permissions == "0600"  # it carries the VRRP password
    assert files[HAPROXY_CFG].permissions == "0644"
    for path in (HAPROXY_CFG, KEEPALIVED_CONF):
        assert files[path].content.startswith("# Generated by keystone-multiregion for proxy-region-a-2")
    doc = yaml.safe_load(rendered.user_data)
    assert doc["runcmd"][0] == ["sysctl", "--system"]
    assert ["systemctl", "enable", "haproxy.service", "keepalived.service"] in doc["runcmd"]
    assert doc["runcmd"].index(["systemctl", "restart", "haproxy.service"]) < \
        doc["runcmd"].index(["systemctl", "restart", "keepalived.service"])
    assert {"haproxy", "keepalived", "curl"} <= set(doc["packages"])
    assert rendered.secret is True
    assert secrets["vrrp_password"] in files[KEEPALIVED_CONF].content


def test_peer_ca_from_a_secret_when_the_deployment_has_one(topo, secrets):
    """With `public_ca_cert` among the proxy's secrets (a development CA, as in the lab),
    the backups are verified against it; without, against the distribution's bundle."""
    node = topo.node("proxy-region-b-1")
    needed = {"vrrp_password": "x", "public_cert": "CERT\n", "public_key": "KEY\n"}
    assert [f.path for f in PROXY.secret_files(topo, node, needed)] == [PUBLIC_PEM]
    assert PROXY.context(topo, node, needed)["peer_ca"] == SYSTEM_CA_BUNDLE
    with_ca = {**needed, "public_ca_cert": secrets["public_ca_cert"]}
    files = {f.path: f for f in PROXY.secret_files(topo, node, with_ca)}
    assert files[PEER_CA].content == secrets["public_ca_cert"]
    assert files[PUBLIC_PEM].content == "CERT\nKEY\n"
    assert PROXY.context(topo, node, with_ca)["peer_ca"] == PEER_CA


# -- the real tools -----------------------------------------------------------------------

def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if not path:
        pytest.fail(f"{name} is not installed: apt-get install {name} (./run installs it with APT_PACKAGES)")
    return path


def write_tree(rendered, root: Path, extra: dict[str, str] | None = None) -> Path:
    """The node's rendered files under `root`, and haproxy.cfg with every file path HAProxy
    reads rewritten into `root`. Returns the rewritten haproxy.cfg."""
    contents = {f.path: f.content for f in rendered.files}
    contents.update(extra or {})
    for path, content in contents.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    cfg = contents[HAPROXY_CFG]
    # The system CA bundle: a copy under root, so the check does not depend on the machine.
    bundle = root / SYSTEM_CA_BUNDLE.lstrip("/")
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_text(contents.get(PEER_CA) or pki.make_ca("stand-in")[0])
    for path in sorted(set(contents) | {SYSTEM_CA_BUNDLE}):
        cfg = re.sub(rf"(?<=\s){re.escape(path)}(?=\s|$)", str(root / path.lstrip("/")), cfg, flags=re.M)
    out = root / "haproxy-check.cfg"
    out.write_text(cfg)
    return out


def haproxy_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("haproxy"), "-c", "-f", str(path)], capture_output=True, text=True, timeout=60)


def keepalived_check(path: Path) -> subprocess.CompletedProcess:
    keepalived = _tool("keepalived")
    if not Path("/usr/bin/curl").exists():
        pytest.fail("/usr/bin/curl is missing: keepalived -t refuses the health script (apt-get install curl)")
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to give keepalived -t an eth0"
    script = 'ip link add eth0 type veth peer name peer0 && exec "$0" -t -f "$1"'
    # root: a plain new network namespace; otherwise one inside a new user namespace.
    flags = ["-n"] if os.geteuid() == 0 else ["-r", "-n"]
    result = subprocess.run([unshare, *flags, "sh", "-c", script, keepalived, str(path)],
                            capture_output=True, text=True, timeout=60)
    if "unshare failed" in result.stderr or "Cannot open netlink" in result.stderr:
        pytest.fail(f"cannot make a network namespace for keepalived -t here: {result.stderr.strip()}")
    return result


def test_haproxy_accepts_every_rendered_configuration(case, tmp_path):
    name, topo, secrets = case
    checked = 0
    for proxy in topo.nodes(role="proxy"):
        rendered = render_node(topo, proxy.name, secrets)
        result = haproxy_check(write_tree(rendered, tmp_path / proxy.name))
        assert result.returncode == 0 and "Configuration file is valid" in result.stdout, \
            f"{name}/{proxy.name}: {result.stdout}{result.stderr}"
        assert "WARNING" not in result.stdout + result.stderr, result.stdout + result.stderr
        checked += 1
    assert checked == len(topo.nodes(role="proxy")) > 0


def test_haproxy_accepts_the_peer_ca_variant(topo, secrets, tmp_path):
    node = topo.node("proxy-region-a-1")
    rendered = render_node(topo, node.name, secrets)
    text = _files(rendered)[HAPROXY_CFG].content.replace(SYSTEM_CA_BUNDLE, PEER_CA)
    path = write_tree(rendered, tmp_path, {PEER_CA: secrets["public_ca_cert"], HAPROXY_CFG: text})
    assert str(tmp_path / PEER_CA.lstrip("/")) in path.read_text()
    result = haproxy_check(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_keepalived_accepts_every_rendered_configuration(case, tmp_path):
    name, topo, secrets = case
    for proxy in topo.nodes(role="proxy"):
        path = tmp_path / f"{proxy.name}.conf"
        path.write_text(_files(render_node(topo, proxy.name, secrets))[KEEPALIVED_CONF].content)
        result = keepalived_check(path)
        assert result.returncode == 0, f"{name}/{proxy.name}: rc {result.returncode}: {result.stdout}{result.stderr}"
        assert result.stdout + result.stderr == "", result.stdout + result.stderr


def test_the_tool_checks_can_fail(topo, secrets, tmp_path):
    rendered = render_node(topo, "proxy-region-a-1", secrets)
    files = _files(rendered)
    broken = files[HAPROXY_CFG].content.replace("check port 9200", "chek port 9200")
    result = haproxy_check(write_tree(rendered, tmp_path / "h", {HAPROXY_CFG: broken}))
    assert result.returncode != 0 and "unknown keyword 'chek'" in result.stdout + result.stderr
    # A missing certificate file is caught too.
    path = write_tree(rendered, tmp_path / "h2")
    (tmp_path / "h2" / PUBLIC_PEM.lstrip("/")).unlink()
    assert haproxy_check(path).returncode != 0
    bad = tmp_path / "bad.conf"
    bad.write_text(files[KEEPALIVED_CONF].content.replace("auth_type PASS", "auth_typ PASS"))
    result = keepalived_check(bad)
    assert result.returncode != 0 and "Unknown keyword 'auth_typ'" in result.stdout + result.stderr
    bad.write_text(files[KEEPALIVED_CONF].content.replace("dev eth0", "dev eth7"))
    assert keepalived_check(bad).returncode != 0


def test_keystone_frontends_drop_the_clients_forwarding_headers(case):
    """Keystone takes the client's address, scheme and host from Forwarded/X-Forwarded-*:
    both Keystone frontends delete whatever the client sent, then set them from the real
    connection (option forwardfor, X-Forwarded-Proto)."""
    _, topo, secrets = case
    for proxy in topo.nodes(role="proxy"):
        cfg = parse_haproxy(_files(render_node(topo, proxy.name, secrets))[HAPROXY_CFG].content)
        for frontend in ("frontend keystone_public", "frontend keystone_internal"):
            lines = cfg[frontend]
            deleted = [line.split()[2].lower() for line in lines if line.startswith("http-request del-header ")]
            assert sorted(deleted) == sorted(["forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                                              "x-forwarded-port", "x-forwarded-prefix"]), (proxy.name, frontend)
            assert any(line.startswith("option forwardfor") for line in lines)
            setters = [i for i, line in enumerate(lines) if line.startswith("http-request set-header X-Forwarded-Proto")]
            dels = [i for i, line in enumerate(lines) if line.startswith("http-request del-header")]
            assert setters and max(dels) < min(setters)  # deleted before HAProxy sets its own


# -- who answered: the response headers the rollout gate reads ----------------------------

def _match(fetch: str, flags: list[str], server: str, headers: dict[str, str]) -> bool:
    """One HAProxy sample fetch with its match, as the response rules here use them."""
    if fetch == "srv_name":
        assert flags[0] == "-m" and flags[1] == "str", flags
        return server in flags[2:]
    m = re.fullmatch(r"res\.hdr\(([^)]+)\)", fetch)
    assert m and flags == ["-m", "found"], (fetch, flags)
    return m.group(1).lower() in headers


def _condition(words: list[str], acls: dict, server: str, headers: dict[str, str]) -> bool:
    """`if` terms ANDed: named ACLs and anonymous `{ ... }` ones, each maybe negated."""
    result, i = True, 0
    while i < len(words):
        negate = words[i].startswith("!")
        word = words[i][1:] if negate else words[i]
        if word == "{":
            end = words.index("}", i)
            fetch, *flags = words[i + 1:end]
            value = _match(fetch, flags, server, headers)
            i = end + 1
        else:
            fetch, flags = acls[word]
            value = _match(fetch, flags, server, headers)
            i += 1
        result = result and (value != negate)
    return result


def answered(section: list[str], server: str, headers: dict[str, str]) -> dict[str, str]:
    """The response headers the client gets when `server` of this backend answered with
    `headers`: the backend's acl and http-response set-header lines applied in order."""
    acls, out = {}, {k.lower(): v for k, v in headers.items()}
    for line in section:
        words = line.split()
        if words[0] == "acl":
            acls[words[1]] = (words[2], words[3:])
        elif words[0] == "http-response":
            assert words[1] == "set-header", line
            name, value, rest = words[2], words[3], words[4:]
            assert not rest or rest[0] == "if", line
            if not rest or _condition(rest[1:], acls, server, out):
                out[name.lower()] = server if value == "%[srv_name]" else value
    return out


def test_every_answer_names_the_region_and_node_that_served_it(case):
    """A local Keystone node's answer is named after this region and the node, whatever the
    node sent; an answer through another region's endpoint (a backup) keeps the names that
    region's proxy set, and one without names is named after the backup server and ITS
    region: never this region for an answer it did not serve."""
    _, topo, secrets = case
    for proxy in topo.nodes(role="proxy"):
        cfg = parse_haproxy(_files(render_node(topo, proxy.name, secrets))[HAPROXY_CFG].content)
        region = proxy.region
        forged = {REGION_HEADER: "elsewhere", NODE_HEADER: "nobody"}
        for backend in ("backend keystone", "backend keystone_local"):
            for srv in (s for s in servers(cfg[backend]) if not s["backup"]):
                for sent in ({}, forged):
                    got = answered(cfg[backend], srv["name"], sent)
                    assert (got[REGION_HEADER.lower()], got[NODE_HEADER.lower()]) == (region, srv["name"]), \
                        (proxy.name, backend, srv["name"], sent)
        backups = [s for s in servers(cfg["backend keystone"]) if s["backup"]]
        assert len(backups) == sum(len(topo.vips(r, "public")) for r in ring_after(topo, region))
        behind = {b["name"]: b["region"] for b in keystone_backups(topo, region)}
        for srv in backups:
            other = behind[srv["name"]]
            assert other != region
            names = {REGION_HEADER: other, NODE_HEADER: f"keystone-{other}-2"}
            got = answered(cfg["backend keystone"], srv["name"], names)
            assert (got[REGION_HEADER.lower()], got[NODE_HEADER.lower()]) == (other, f"keystone-{other}-2"), \
                (proxy.name, srv["name"])
            got = answered(cfg["backend keystone"], srv["name"], {})
            assert (got[REGION_HEADER.lower()], got[NODE_HEADER.lower()]) == (other, srv["name"]), \
                (proxy.name, srv["name"])


def test_the_answer_simulation_can_fail(topo, secrets):
    """The simulation above reads the rules it is given: a backend that names its own
    region unconditionally claims the backups' answers, and the check sees it."""
    cfg = parse_haproxy(_files(render_node(topo, "proxy-region-a-1", secrets))[HAPROXY_CFG].content)
    careless = [line for line in cfg["backend keystone"] if not line.startswith("http-response")] + \
        [f"http-response set-header {REGION_HEADER} region-a", f"http-response set-header {NODE_HEADER} %[srv_name]"]
    backup = next(s for s in servers(careless) if s["backup"])
    got = answered(careless, backup["name"], {REGION_HEADER: "region-b", NODE_HEADER: "keystone-region-b-1"})
    assert got[REGION_HEADER.lower()] == "region-a"
    assert answered(careless, backup["name"], {}) == {REGION_HEADER.lower(): "region-a",
                                                      NODE_HEADER.lower(): backup["name"]}
