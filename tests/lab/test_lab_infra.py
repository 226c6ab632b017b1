"""Tests of the lab's infrastructure layer: namespaces as regions, partitions, link
failures, latency injection, processes with VM-like paths, teardown (also after a crash
and on SIGTERM). Root only; about 20-30 s in all."""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from lab.testing import DEMO_CIDRS as CIDRS, DEMO_HOSTS as DEMO

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.lab
HOSTS = [h[0] for h in DEMO]


# ---------------------------------------------------------------------------------- net
def test_ping_across_regions(lab3):
    net = lab3.net
    for src, dst in itertools.permutations(HOSTS, 2):
        r = net.ping(src, dst, count=2, interval=0.1)
        print(f"{src} -> {dst}: {r.received}/{r.sent} avg {r.avg_ms} ms")
        assert r.received == r.sent == 2, r.output
        assert r.min_ms < 45  # no WAN delay configured: far from the 50 ms a delay would add


def test_layout(lab3):
    """eth0 inside each host namespace, on-link routes to the other regions' CIDRs, WAN
    ports enslaved to the bridge, lo up, names within 15 characters."""
    net = lab3.net
    for name, h in net.hosts().items():
        assert len(h["netns"]) <= 15 and len(h["wan_if"]) <= 15
        routes = net.exec(name, ["ip", "route", "show"]).stdout
        own = CIDRS[h["region"]]
        for cidr in CIDRS.values():
            assert cidr in routes
            if cidr != own:
                assert f"{cidr} dev eth0 scope link" in routes
        assert "UP" in net.exec(name, ["ip", "-br", "link", "show", "lo"]).stdout
        assert h["address"] in net.exec(name, ["ip", "-br", "addr", "show", "eth0"]).stdout
    bridge_ports = subprocess.run(["ip", "-n", net.wan_ns, "-br", "link", "show", "master",
                                   net.bridge], capture_output=True, text=True).stdout
    for h in net.hosts().values():
        assert h["wan_if"] in bridge_ports
    # nothing of the lab in the root namespace
    root_links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert lab3.prefix not in root_links


def test_refuses_non_lab_address(lab3):
    from lab import LabError
    with pytest.raises(LabError):
        lab3.net.ping("a1", "192.0.2.1")


def test_partition_and_heal(lab3):
    net = lab3.net
    net.partition_region("c")
    try:
        t0 = time.monotonic()
        assert not net.can_reach("c1", "a1")
        assert not net.can_reach("a1", "c1")
        assert not net.can_reach("b1", "c1")
        print(f"3 failing pings took {time.monotonic() - t0:.2f}s")
        assert net.can_reach("a1", "b1") and net.can_reach("b1", "a1")
        assert net.partitioned("c1")
    finally:
        net.heal()
    assert not net.partitioned("c1")
    # ARP entries for c1 may have failed during the cut: allow a few seconds to recover
    assert net.ping("c1", "a1", count=3, interval=0.2, timeout=5).ok
    assert net.can_reach("a1", "c1")


def test_partition_from_one_peer_only(lab3):
    net = lab3.net
    net.partition(["c1"], peers=[CIDRS["a"]])
    try:
        assert not net.can_reach("c1", "a1")
        assert net.can_reach("c1", "b1")
        assert net.can_reach("a1", "b1")
    finally:
        net.heal(["c1"])
    assert net.can_reach("c1", "a1")


def test_several_hosts_per_region(lab3):
    """A second host of region a joins the same bridge; a region partition cuts both
    a-hosts from b and c, while they still reach each other."""
    from lab import HostSpec
    net = lab3.net
    net.add_host(HostSpec("a2", "a", "10.0.1.11/24"))
    assert net.region_hosts("a") == ["a1", "a2"]
    assert net.can_reach("a2", "a1") and net.can_reach("a2", "c1")
    net.partition_region("a")
    try:
        assert not net.can_reach("a2", "b1") and not net.can_reach("c1", "a1")
        assert net.can_reach("a2", "a1")
        assert net.can_reach("b1", "c1")
    finally:
        net.heal()
    assert net.can_reach("a2", "b1") and net.can_reach("c1", "a1")


def test_link_down_up(lab3):
    net = lab3.net
    net.link_down("b1")
    try:
        assert not net.is_link_up("b1")
        assert not net.can_reach("a1", "b1")
        assert net.can_reach("a1", "c1")
    finally:
        net.link_up("b1")
    assert net.is_link_up("b1")
    assert net.ping("a1", "b1", count=3, interval=0.2, timeout=5).ok


def _tcp_connect_ms(net, src: str, dst: str, n: int = 3) -> list[float]:
    """Time to a TCP RST from a closed port on dst: one application-level round trip."""
    code = ("import socket, time\nts = []\nfor _ in range(%d):\n t = time.monotonic()\n"
            " try: socket.create_connection((%r, 9), timeout=3).close()\n"
            " except OSError: pass\n ts.append((time.monotonic() - t) * 1000)\n"
            "print(' '.join('%%.1f' %% x for x in ts))" % (n, net.ip(dst)))
    return [float(x) for x in net.exec(src, [sys.executable, "-c", code],
                                       timeout=20).stdout.split()]


@pytest.mark.parametrize("direction", [None, "out"])
def test_latency_injection(lab3, direction):
    """50 ms each way between a1 and b1 only: ping RTT and a TCP round trip >= 90 ms,
    a1<->c1 unaffected; back under 10 ms after clear_latency."""
    net = lab3.net
    before = net.ping("a1", "b1", count=5, interval=0.1)
    t0 = time.monotonic()
    mode = net.set_latency("a1", 50, peers=[net.ip("b1")], direction=direction)
    net.set_latency("b1", 50, peers=[net.ip("a1")], direction=direction)
    setup_s = time.monotonic() - t0
    try:
        delayed = net.ping("a1", "b1", count=5, interval=0.2, timeout=5)
        back = net.ping("b1", "a1", count=3, interval=0.2, timeout=5)
        tcp = _tcp_connect_ms(net, "a1", "b1")
        other = net.ping("a1", "c1", count=5, interval=0.1)
    finally:
        t1 = time.monotonic()
        net.clear_latency("a1")
        net.clear_latency("b1")
        clear_s = time.monotonic() - t1
    after = net.ping("a1", "b1", count=5, interval=0.1)
    print(f"mode={mode} setup {setup_s:.2f}s clear {clear_s:.2f}s; RTT a1<->b1 before "
          f"{before.avg_ms} ms; with 50 ms each way: ping min/avg/max {delayed.min_ms}/"
          f"{delayed.avg_ms}/{delayed.max_ms} ms, reverse {back.avg_ms} ms, TCP round trips "
          f"{tcp} ms; a1<->c1 meanwhile {other.avg_ms} ms; after clear {after.avg_ms} ms")
    assert delayed.received == 5, delayed.output
    # Outcomes: the delay is there (a floor no busy machine can lower), not applied twice
    # (200 ms), not on other pairs, gone after clear (a 50 ms delay would show as >= 45 ms).
    assert delayed.min_ms >= 90 and delayed.min_ms < 190, delayed.output
    assert back.min_ms >= 90, back.output
    assert min(tcp) >= 90, tcp
    assert other.min_ms < 45, other.output
    assert after.received == 5 and after.min_ms < 45, after.output
    assert not [k for k in lab3.state.read()["processes"] if k.endswith("/ksl-delayer")]


def test_latency_all_peers(lab3):
    """Without peers, all of c1's traffic gets the delay: ~50 ms RTT to any other host."""
    net = lab3.net
    net.set_latency("c1", 50)
    try:
        r1 = net.ping("c1", "a1", count=3, interval=0.2, timeout=5)
        r2 = net.ping("b1", "c1", count=3, interval=0.2, timeout=5)
    finally:
        net.clear_latency("c1")
    print(f"c1 +50 ms: c1->a1 {r1.avg_ms} ms, b1->c1 {r2.avg_ms} ms")
    assert 45 <= r1.min_ms < 90  # delayed once (50 ms), not twice
    assert 45 <= r2.min_ms < 90


def test_sysctl_per_namespace(lab3):
    net = lab3.net
    net.set_sysctl("a1", "net.ipv4.ip_nonlocal_bind", 1)
    assert net.get_sysctl("a1", "net.ipv4.ip_nonlocal_bind") == "1"
    assert net.get_sysctl("b1", "net.ipv4.ip_nonlocal_bind") == "0"
    with open("/proc/sys/net/ipv4/ip_nonlocal_bind") as f:
        root_value = f.read().strip()
    assert lab3.state.read()["sysctls"]["kslt-a1"]["net.ipv4.ip_nonlocal_bind"] == "1"
    print(f"root namespace ip_nonlocal_bind stays {root_value}")


# -------------------------------------------------------------------------------- procs
def _real_listing(path: str):
    if not os.path.exists(path):
        return None
    return sorted(os.listdir(path)) if os.path.isdir(path) else "file"


def test_bind_mounted_vm_paths(lab3):
    procs = lab3.procs
    real_before = {p: _real_listing(p) for p in ("/etc/mysql", "/var/lib/mysql")}
    procs.make_root("a1", ["/etc/mysql", "/var/lib/mysql", "/run/mysqld", "/var/log/mysql"])
    procs.make_root("b1", ["/etc/mysql", "/var/lib/mysql"])
    # written from inside at the VM path, read back inside and from the host tree
    content = "[mysqld]\nwsrep_on = ON\n"
    procs.run("a1", ["sh", "-c", 'mkdir -p /etc/mysql/conf.d && printf "%s" "$1" > '
                                 '/etc/mysql/conf.d/x.cnf', "sh", content])
    inside = procs.run("a1", ["cat", "/etc/mysql/conf.d/x.cnf"]).stdout
    assert inside == content
    host_file = procs.host_path("a1", "/etc/mysql/conf.d/x.cnf")
    assert host_file.startswith(lab3.labdir)
    with open(host_file) as f:
        assert f.read() == content
    # written from the host tree, seen inside at the VM path; hosts do not share trees
    with open(procs.host_path("a1", "/var/lib/mysql/grastate.dat"), "w") as f:
        f.write("seqno: 7\n")
    assert procs.run("a1", ["cat", "/var/lib/mysql/grastate.dat"]).stdout == "seqno: 7\n"
    assert procs.run("b1", ["ls", "-A", "/var/lib/mysql"]).stdout == ""
    assert procs.run("b1", ["test", "-e", "/etc/mysql/conf.d/x.cnf"], check=False
                     ).returncode == 1
    # the real paths on the machine are untouched, and no lab mount is visible here
    # (a VM path missing on the machine gets an empty mountpoint directory, recorded in
    # created_paths; the lab3 fixture checks teardown removes it again)
    assert not os.path.exists("/etc/mysql/conf.d/x.cnf")
    created = lab3.state.read()["created_paths"]
    for p, listing in real_before.items():
        if listing is None:
            assert p in created and _real_listing(p) == []
        else:
            assert _real_listing(p) == listing
    with open("/proc/self/mountinfo") as f:
        assert lab3.labdir not in f.read()


def test_daemon_lifecycle(lab3):
    from lab import LabError, wait_for
    procs = lab3.procs
    procs.make_root("c1", ["/etc/mysql"])
    with open(procs.host_path("c1", "/etc/mysql/my.cnf"), "w") as f:
        f.write("marker-c1\n")
    log = procs.log_path("c1", "reader")
    rec = procs.start("c1", "reader", ["sh", "-c", "cat /etc/mysql/my.cnf; exec sleep 120"],
                      ready=lambda: "marker-c1" in open(log).read(), ready_timeout=10)
    lab3.started_pids.append((rec["pid"], rec.get("starttime")))
    assert procs.is_alive("c1", "reader")
    pidfile = procs.pidfile_path("c1", "reader")
    assert open(pidfile).read().strip() == str(rec["pid"])
    # its network namespace is the host's
    assert os.readlink(f"/proc/{rec['pid']}/ns/net") == \
        f"net:[{os.stat('/run/netns/' + lab3.net.netns('c1')).st_ino}]"
    # its mount namespace is private: the bind is there, not in ours
    with open(f"/proc/{rec['pid']}/mountinfo") as f:
        assert " /etc/mysql " in f.read()
    t0 = time.monotonic()
    assert procs.stop("c1", "reader", timeout=5) == "stopped"
    print(f"SIGTERM stop took {time.monotonic() - t0:.2f}s")
    assert not procs.is_alive("c1", "reader") and not os.path.exists(pidfile)

    # a process that ignores SIGTERM is SIGKILLed after the bounded wait
    rec = procs.start("c1", "stubborn", ["sh", "-c", "trap '' TERM; exec sleep 120"])
    lab3.started_pids.append((rec["pid"], rec.get("starttime")))
    wait_for(lambda: procs.is_alive("c1", "stubborn"), timeout=5)
    time.sleep(0.2)  # let the shell install the trap before exec
    t0 = time.monotonic()
    assert procs.stop("c1", "stubborn", timeout=0.5) == "killed"
    print(f"SIGKILL after the bounded wait took {time.monotonic() - t0:.2f}s")

    # kill -9 (a crash): the record stays, is_alive turns false
    rec = procs.start("c1", "victim", ["sleep", "120"])
    lab3.started_pids.append((rec["pid"], rec.get("starttime")))
    procs.kill("c1", "victim")
    assert not procs.is_alive("c1", "victim")
    assert procs.record("c1", "victim") is not None
    assert procs.stop("c1", "victim") == "gone"

    # readiness that never comes is bounded and reports the log
    with pytest.raises(LabError):
        procs.start("c1", "dies", ["sh", "-c", "echo boom; exit 3"], ready=lambda: False,
                    ready_timeout=5)
    procs.stop("c1", "dies")
    with pytest.raises(TimeoutError):
        wait_for(lambda: False, timeout=0.3, interval=0.05, what="never")


def test_session_leaves_daemons_for_teardown(lab3):
    """A daemon and the delayer left running are removed by the fixture's teardown (the
    fixture then asserts nothing is left)."""
    rec = lab3.procs.start("b1", "leftover", ["sleep", "120"])
    lab3.started_pids.append((rec["pid"], rec.get("starttime")))
    lab3.net.set_latency("b1", 5)
    lab3.net.partition(["a1"], peers=[CIDRS["c"]])
    delayer = lab3.state.get("processes", "b1/ksl-delayer")
    lab3.started_pids.append((delayer["pid"], delayer.get("starttime")))


# ----------------------------------------------------------------------------- teardown
CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from lab import Lab, HostSpec
    lab = Lab({labdir!r}, {prefix!r})
    lab.net.build([HostSpec("a1", "a", "10.0.1.10/24"), HostSpec("b1", "b", "10.0.2.10/24")])
    lab.procs.make_root("a1", ["/etc/mysql", "/var/lib/mysql", "/run/kslx-crash"])
    rec = lab.procs.start("a1", "db", ["sleep", "120"])
    lab.net.set_latency("b1", 20)
    lab.net.partition(["a1"])
    print("pids", rec["pid"], lab.state.get("processes", "b1/ksl-delayer")["pid"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)   # crash: no cleanup at all
""")


def _built_lab(prefix: str, labdir: str, script: str) -> subprocess.Popen:
    code = script.format(repo=REPO, labdir=labdir, prefix=prefix)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def test_teardown_after_crash(lab_tools, tmp_path):
    from lab import teardown
    from lab.state import list_netns
    from lab.testing import assert_clean, ns_inode
    prefix, labdir = "kslx-", str(tmp_path / "lab")
    p = _built_lab(prefix, labdir, CRASH_SCRIPT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, (out, err)
    pids = [int(x) for x in out.split()[1:3]]
    namespaces = list_netns(prefix)
    assert set(namespaces) == {"kslx-wan", "kslx-a1", "kslx-b1"}
    assert os.path.exists(os.path.join(labdir, "state.json"))
    inodes = {ns_inode(ns) for ns in namespaces}
    t0 = time.monotonic()
    removed = teardown(labdir)  # a new process would do exactly this (python -m lab net-down)
    print(f"teardown after crash: {time.monotonic() - t0:.2f}s, removed {removed}")
    assert not removed["errors"]
    assert sorted(removed["namespaces"]) == sorted(namespaces)
    assert "/run/kslx-crash" in removed["paths"] and not os.path.exists("/run/kslx-crash")
    assert_clean(prefix, labdir, inodes, pids)
    assert not os.path.exists(os.path.join(labdir, "state.json"))
    assert teardown(labdir)["namespaces"] == []  # idempotent


SIGTERM_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from lab import HostSpec, session
    with session({labdir!r}, {prefix!r}) as lab:
        lab.net.build([HostSpec("a1", "a", "10.0.1.10/24"), HostSpec("b1", "b", "10.0.2.10/24")])
        rec = lab.procs.start("a1", "db", ["sleep", "120"])
        lab.net.set_latency("a1", 10)
        print("ready", rec["pid"], flush=True)
        time.sleep(60)
    print("not reached", flush=True)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_session_tears_down_on_signal(lab_tools, tmp_path, sig):
    from lab.state import list_netns
    from lab.testing import assert_clean, ns_inode
    prefix, labdir = "ksly-", str(tmp_path / "lab")
    p = _built_lab(prefix, labdir, SIGTERM_SCRIPT)
    try:
        line = p.stdout.readline()  # bounded: the script prints within seconds or dies
        assert line.startswith("ready"), (line, p.stderr.read() if p.poll() is not None else "")
        pid = int(line.split()[1])
        inodes = {ns_inode(ns) for ns in list_netns(prefix)}
        assert len(inodes) == 3
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    print(f"signal {sig.name}: rc={p.returncode}")
    assert "not reached" not in out
    assert p.returncode != 0
    assert_clean(prefix, labdir, inodes, [pid])


def test_missing_packages_uses_dpkg_only(lab_tools):
    from lab.packages import missing_packages
    assert missing_packages(["iproute2", "nftables", "kslt-no-such-package"]) == [
        "kslt-no-such-package"]


def test_cli_net_up_status_down(lab_tools, tmp_path):
    labdir = str(tmp_path / "cli")
    env = {**os.environ, "PYTHONPATH": REPO}
    base = [sys.executable, "-m", "lab", "--labdir", labdir, "--prefix", "kslz-"]
    try:
        up = subprocess.run(base + ["net-up", "--no-install"], capture_output=True, text=True,
                            timeout=60, env=env, cwd=REPO)
        print(up.stdout, up.stderr)
        assert up.returncode == 0
        assert up.stdout.count("2/2") == 3
        st = subprocess.run(base + ["net-status"], capture_output=True, text=True, timeout=30,
                            env=env, cwd=REPO)
        assert st.returncode == 0 and "kslz-c1 present=True" in st.stdout
    finally:
        down = subprocess.run(base + ["net-down"], capture_output=True, text=True,
                              timeout=60, env=env, cwd=REPO)
    print(down.stdout, down.stderr)
    assert down.returncode == 0 and "namespaces left: none" in down.stdout


def test_a_reused_pid_is_not_a_leftover(lab_tools, tmp_path):
    """A recorded process that ended, whose pid another process now has (pids wrap at
    pid_max over a long CI run): not a leftover; the recorded process itself still running is."""
    from lab.testing import leftovers
    from lab.util import proc_starttime
    p = subprocess.Popen(["sleep", "60"])
    try:
        start = proc_starttime(p.pid)
        assert leftovers("kslq-", str(tmp_path), pids=[(p.pid, start)])["alive_pids"] == [p.pid]
        # The same pid, recorded with another start time: a different process.
        assert leftovers("kslq-", str(tmp_path), pids=[(p.pid, start - 1)])["alive_pids"] == []
        assert leftovers("kslq-", str(tmp_path), pids=[p.pid])["alive_pids"] == [p.pid]  # a bare pid counts
    finally:
        p.kill()
        p.wait(timeout=10)
    assert leftovers("kslq-", str(tmp_path), pids=[(p.pid, start)])["alive_pids"] == []
