"""The proxies in the lab: HAProxy and keepalived on their rendered files, the VIPs on
their masters, the frontends answering whom the security groups allow, and the drills
(each prints what it measured and leaves the lab as it found it)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def drills(deployment):
    from lab.proxy_drills import ProxyDrills
    return ProxyDrills(deployment)


def _run(drill):
    from lab.proxy_drills import DrillCannotRun
    try:
        result = drill()
    except DrillCannotRun as exc:  # a drill that cannot run has failed (a skip is never a pass)
        pytest.fail(f"the drill could not run: {exc}")
    print(result.line())
    assert result.ok, result.line()
    return result


def test_proxy_checks_pass(deployment):
    from lab.layers import proxy
    checks = proxy.checks(deployment)
    for c in checks:
        print(c.line())
    topo = deployment.topo
    serving = [r.name for r in topo.regions if topo.vips(r.name)]
    # sysctl per proxy, holder per VIP, writer per proxy, and per region: the database
    # frontend answers / refuses, HTTPS and the rollout gate per public VIP, the internal
    # endpoint answers its own region and refuses another region's node (plain HTTP stays in
    # its region).
    assert len(checks) == 2 * len(topo.nodes(role="proxy")) + sum(len(topo.vips(r)) for r in serving) + \
        sum(2 + 2 * len(topo.vips(r, "public")) + 2 for r in serving)
    gates = [c for c in checks if "the rollout gate sees" in c.name]
    assert len(gates) == sum(len(topo.vips(r, "public")) for r in serving)
    for region in serving:  # the gate's own line: every answer from the region itself
        assert any(c.detail.startswith(f"{region} serves by itself: ") for c in gates), [c.line() for c in gates]
    assert [c.line() for c in checks if not c.ok] == []


def test_daemons_run_on_the_rendered_files(deployment):
    from keystone_multiregion.render import render_node
    from lab.layers import proxy
    secrets = deployment.secrets()
    for node in deployment.topo.nodes(role="proxy"):
        for name in ("haproxy", "keepalived"):
            assert deployment.lab.procs.is_alive(node.name, name), f"{node.name}/{name}"
        files = {f.path: f.content for f in render_node(deployment.topo, node.name, secrets).files}
        for path in (proxy.HAPROXY_CFG, proxy.KEEPALIVED_CONF):
            assert deployment.lab.procs.run(node.name, ["cat", path]).stdout == files[path]
        # HAProxy listens on the VIPs (and its loopback monitor) only, never on 0.0.0.0.
        listening = deployment.lab.net.exec(node.name, ["ss", "-Hltn"]).stdout.split("\n")
        local = {line.split()[3] for line in listening if line.strip()}
        vips = {v.address for v in deployment.topo.vips(node.region)}
        # ... and on the node's own address sshd (the stack pushes the node's files over SSH),
        # HAProxy's Prometheus exporter and node_exporter (their security group rules:
        # monitoring.cidr only)
        own = {f"{node.address}:22", f"{node.address}:8405", f"{node.address}:9100"}
        assert local and all(a.rsplit(":", 1)[0] in vips | {"127.0.0.1"} or a in own for a in local), local
        assert own <= local
        assert not [a for a in local if a.startswith(("0.0.0.0:", "*:", "[::]:"))]


# Sends VRRPv2 adverts (RFC 3768, PASS authentication) from inside a lab namespace.
_FORGE_VRRP = r"""
import socket, struct, sys, time
dst, vip, password = sys.argv[1], sys.argv[4], sys.argv[5]
vrid, prio, count = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[6])
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF
body = struct.pack("!BBBBBBH", 0x21, vrid, prio, 1, 1, 1, 0) + socket.inet_aton(vip) + password.encode().ljust(8, b"\0")
body = body[:6] + struct.pack("!H", checksum(body)) + body[8:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
for _ in range(count):
    s.sendto(body, (dst, 0))
    time.sleep(0.5)
"""


def test_vrrp_adverts_count_only_from_the_peer_proxy(deployment):
    """A forged advert (right VRID, right password, priority 254) sent to the master of a
    VIP: from a Keystone node the security group drops it and the master keeps the VIP;
    the same packet from the peer proxy (allowed) makes the master step down, which shows
    the packet itself is valid. The VIP returns to its master afterwards."""
    import sys
    from lab.layers import proxy
    topo = deployment.topo
    vip = topo.vips("lab-a", "public")[0]
    master = topo.node(vip.master)
    peer = next(p for p in topo.nodes("lab-a", "proxy") if p.name != master.name)
    password = deployment.secrets()["vrrp_password"]

    def forge(src: str, count: int) -> None:
        deployment.lab.net.exec(src, [sys.executable, "-c", _FORGE_VRRP, master.address, str(vip.vrid), "254",
                                      vip.address, password, str(count)], timeout=count + 10)

    assert proxy.vip_holders(deployment, "lab-a")[vip.address] == [master.name]
    forge("keystone-lab-a-1", 8)  # 4 s: longer than the 3-advert master-down interval
    assert master.name in proxy.vip_holders(deployment, "lab-a")[vip.address]
    forge(peer.name, 4)
    held = proxy.vip_holders(deployment, "lab-a")[vip.address]
    assert master.name not in held, f"the master kept {vip.address} after a valid higher-priority advert"
    assert proxy.wait(lambda: proxy.vips_settled(deployment, "lab-a"), timeout=30, interval=0.2), \
        proxy.vip_holders(deployment, "lab-a")


def test_the_peer_ca_verifies_every_other_region(deployment):
    """What the backup servers check: from a proxy of lab-a, every other region's public
    VIP presents a certificate that the CA in haproxy.cfg verifies for that region's name."""
    from lab.layers import proxy
    from keystone_multiregion.roles.proxy import PEER_CA, SYSTEM_CA_BUNDLE
    topo = deployment.topo
    cfg = deployment.lab.procs.run("proxy-lab-a-1", ["cat", proxy.HAPROXY_CFG]).stdout
    assert f"ca-file {SYSTEM_CA_BUNDLE}" not in cfg, (
        "the proxies' secrets carry no public_ca_cert (keystone_multiregion/secrets.py must pass it on): the "
        "backups are checked against the system CA bundle, which does not know the lab's CA")
    assert f"ca-file {PEER_CA}" in cfg
    for region in ("lab-b", "lab-c"):
        for vip in topo.vips(region, "public"):
            got = proxy.tls_get(deployment, "proxy-lab-a-1", vip.address, topo.region(region).public_hostname)
            assert got["ok"], got


def _bench_figures(method: str, m: dict) -> None:
    """The bench's failovers (lab/bench.py FAILOVERS; its quick run in CI runs the first only)
    read these figures of this drill: they are there, with a first answer."""
    from lab.bench import FAILOVERS
    (row,) = [f for f in FAILOVERS if f[1] == method]
    _, _, first_key, failed_key, total_key = row
    assert m.get(first_key) is not None and m.get(total_key) and failed_key in m, (method, row, sorted(m))


def test_a1_vip_moves_when_its_proxy_loses_its_link(drills):
    m = _run(drills.drill_vip_link_down).measured
    _bench_figures("drill_vip_link_down", m)
    assert all(v is not None for v in m["move_s"].values())  # moved (durations reported, not judged)
    assert m["back_on_master_s"] is not None


def test_a2_vip_moves_when_keepalived_stops(drills):
    m = _run(drills.drill_vip_keepalived_stop).measured
    _bench_figures("drill_vip_keepalived_stop", m)
    assert all(v is not None for v in m["move_s"].values())


def test_a3_vip_moves_when_haproxy_dies(drills):
    m = _run(drills.drill_vip_haproxy_killed).measured
    _bench_figures("drill_vip_haproxy_killed", m)
    assert all(v is not None for v in m["move_s"].values())
    # The drop-in's ExecStopPost ran when the process ended (the file keepalived tracks read 1),
    # and its ExecStartPost when HAProxy ran again.
    assert m["stop_post_s"] is not None and m["down_file_after_repair"] == "0"


def test_b_database_frontend_moves_to_the_next_node(drills):
    m = _run(drills.drill_db_failover).measured
    _bench_figures("drill_db_failover", m)
    assert m["taken_over_by"] != m["killed"] and m["lost_writes"] == 0


def test_b2_cut_off_region_reads_locally_and_refuses_writes(drills):
    m = _run(drills.drill_db_partition).measured
    assert m["dirty_reads"] > 0 and m["refused_writes"] > 0 and "1047" in m["write_error"]
    assert m["writes_back_after_heal_s"] is not None


def test_c_keystone_requests_fail_over_to_other_regions(drills):
    m = _run(drills.drill_keystone_failover).measured
    _bench_figures("drill_keystone_failover", m)
    assert m["failed"] == 0 and m["first_success_s"] is not None and m["served_by_backups"]
    # The proxies named the region that answered: another one (X-Keystone-Region).
    assert set(m["answered_by_region"]) & set(drills.others), m["answered_by_region"]


def test_keystone_logs_the_real_client_not_a_forged_forwarding_header(drills, deployment):
    """A client sends its own Forwarded / X-Forwarded-For (documentation addresses, never
    contacted) with a failed login through the public VIP: Keystone logs the failure from
    the client's real address (set by HAProxy), never the forged one."""
    import os
    import uuid
    topo = deployment.topo
    logs = {}
    for node in topo.nodes(drills.region, "keystone"):
        for rec in deployment.lab.procs.processes(node.name).values():
            if rec.get("log") and rec["alive"]:
                logs[rec["log"]] = os.path.getsize(rec["log"])
    assert logs, "no running Keystone process with a log in the region"
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": f"forged-{uuid.uuid4().hex[:8]}", "domain": {"id": "default"}, "password": "wrong"}}}}}
    forged = {"X-Forwarded-For": "192.0.2.77", "Forwarded": "for=192.0.2.78;proto=http;host=evil.invalid",
              "X-Forwarded-Host": "evil.invalid", "X-Forwarded-Proto": "http"}
    vip = drills.vips("public")[0]
    (rec, *_) = drills.https_probe(vip, duration=0.1, interval=1, path="/v3/auth/tokens", method="POST",
                                   body=body, headers=forged, timeout=30).results()
    assert rec.get("status") == 401, rec
    client = topo.node(drills.client).address
    lines = []
    for path, size in logs.items():
        with open(path, errors="replace") as fh:
            fh.seek(size)
            lines += [line.strip() for line in fh if "Authorization failed" in line]
    print("\n".join(lines))
    assert lines, "Keystone logged no failed authorization"
    assert not [line for line in lines if "192.0.2.7" in line or "evil.invalid" in line]
    # "Authorization failed. <reason> from <REMOTE_ADDR>: <exception>"
    assert all(f" from {client}:" in line for line in lines), lines
