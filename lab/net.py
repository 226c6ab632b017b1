"""Network namespaces as regions.

Shape::

    ns <prefix>wan:  bridge <prefix>br0 ── <prefix>w<host> (veth) ──┐
                                                                   │
    ns <prefix><host>:  lo, eth0 (other end of that veth) <────────┘
                        eth0 = the host's address (caller gives address/prefixlen)
                        + `ip route add <other region CIDR> dev eth0` (on-link) for every
                          region CIDR not already covered by eth0's own network

All hosts of all regions sit on one L2 bridge; the on-link routes make every region
reachable without a router namespace. Several hosts of one region are several host
namespaces with addresses in the same region CIDR.

Fault injection (all inside the lab's namespaces):
- partition(hosts, peers=None): nftables drop on eth0 in and out (netdev ingress/egress
  hooks on eth0, so senders see silent loss like a real WAN cut; falls back to inet
  input/output hooks where the egress hook is missing): everything (ARP included) when
  peers is None, else only IPv4 from/to the peer CIDRs. partition_region(r) cuts the
  region's hosts from the other regions' CIDRs only (intra-region traffic still flows).
  heal() removes the rules.
- link_down(host)/link_up(host): the WAN side of the host's veth goes down/up (the
  cable is cut; the host keeps its addresses and routes).
- set_latency(host, ms, peers=None, loss_pct=0, direction=None): netem on eth0 (egress)
  where the kernel has it (probed once per lab), else an iptables NFQUEUE rule (chain
  KSL-DELAY, jumped to from INPUT -i eth0 by default, or OUTPUT -o eth0 with
  direction="out"; --queue-bypass) plus lab/delayer.py run inside the namespace. Each
  host adds one-way delay: for an RTT of 2*ms between X and Y, set it on both X
  (peers=[Y]) and Y (peers=[X]).

Every address the lab sends to is checked to be a lab address (or loopback).
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import math
import os
import re
import signal
import sys
import time
from typing import Any, Iterable, Mapping, Sequence

from .state import LabState, list_netns, netns_pids
from .util import (NAME_RE, LabError, tail, proc_starttime, run, short_name, spawn_detached,
                   stop_process, wait_for)

DELAYER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "delayer.py")
PART_TABLE = "ksl_part"
DELAY_CHAIN = "KSL-DELAY"
# applied in every namespace the lab creates, before the caller's sysctls. Empty on
# purpose: IPv6 stays enabled (only link-local addresses on eth0, ::1 on lo), because
# daemons that bind [::] or ::1 by default fail where IPv6 is disabled.
DEFAULT_SYSCTLS: dict[str, str] = {}


@dataclasses.dataclass(frozen=True)
class HostSpec:
    """One lab host (= one namespace, one VM-to-be).

    name: short DNS-like name ([a-z0-9-]), e.g. "galera-a-1"
    region: region name, e.g. "a"
    address: address with prefix length on eth0, e.g. "10.0.1.10/24"
    """
    name: str
    region: str
    address: str

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.address)

    @property
    def ip(self) -> str:
        return str(self.interface.ip)


@dataclasses.dataclass(frozen=True)
class PingResult:
    sent: int
    received: int
    min_ms: float | None
    avg_ms: float | None
    max_ms: float | None
    output: str

    @property
    def ok(self) -> bool:
        return self.received > 0


def probe_netem(prefix: str) -> bool:
    """True if this kernel has the netem qdisc: tries it on `lo` of a throwaway namespace
    `<prefix>probe` (removed again before returning)."""
    ns = short_name(f"{prefix}probe")
    if ns in list_netns(prefix):
        run(["ip", "netns", "del", ns], check=False)
    run(["ip", "netns", "add", ns])
    try:
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        cp = run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root",
                  "netem", "delay", "1ms"], check=False)
        return cp.returncode == 0
    finally:
        run(["ip", "netns", "del", ns], check=False)


class Network:
    """The lab network of one LabState (one prefix, one labdir)."""

    def __init__(self, state: LabState):
        self.state = state
        self.prefix = state.prefix
        self.wan_ns = short_name(f"{self.prefix}wan")
        self.bridge = short_name(f"{self.prefix}br0")

    # -- naming -------------------------------------------------------------------------
    def ns_name(self, host: str) -> str:
        """Namespace name of a host: prefix + host, shortened to 15 chars if needed."""
        return short_name(f"{self.prefix}{host}")

    def wan_if_name(self, host: str) -> str:
        """Name of the WAN-side end of the host's veth (in the WAN namespace)."""
        return short_name(f"{self.prefix}w{host}")

    # -- queries --------------------------------------------------------------------------
    def hosts(self) -> dict[str, dict[str, Any]]:
        """Recorded hosts: name -> {region, address, netns, wan_if, routes, ...}."""
        return self.state.read()["hosts"]

    def host(self, name: str) -> dict[str, Any]:
        h = self.hosts().get(name)
        if h is None:
            raise LabError(f"unknown lab host {name!r}")
        return h

    def netns(self, host: str) -> str:
        return self.host(host)["netns"]

    def ip(self, host: str) -> str:
        """The host's eth0 address without prefix length."""
        return str(ipaddress.IPv4Interface(self.host(host)["address"]).ip)

    def region_hosts(self, region: str) -> list[str]:
        return sorted(n for n, h in self.hosts().items() if h["region"] == region)

    def region_cidrs(self) -> dict[str, str]:
        return dict(self.state.read()["probes"].get("region_cidrs", {}))

    def is_lab_address(self, addr: str) -> bool:
        """True for loopback, lab host addresses and anything inside a lab region CIDR."""
        ip = ipaddress.ip_address(addr)
        if ip.is_loopback:
            return True
        nets = [ipaddress.ip_network(c) for c in self.region_cidrs().values()]
        nets += [ipaddress.IPv4Interface(h["address"]).network for h in self.hosts().values()]
        return any(ip in n for n in nets)

    # -- build ----------------------------------------------------------------------------
    def build(self, hosts: Sequence[HostSpec], region_cidrs: Mapping[str, str] | None = None,
              sysctls: Mapping[str, str] | None = None) -> None:
        """Create the WAN namespace + bridge and one namespace per host, wired as described
        in the module doc. region_cidrs (region -> CIDR) defaults to each region's eth0
        network. sysctls are applied in every host namespace (after DEFAULT_SYSCTLS).
        Raises LabError if a name is already in use; on failure the partial lab stays
        recorded in the state file for teardown()."""
        self._validate(hosts)
        cidrs = dict(region_cidrs or {})
        for h in hosts:
            cidrs.setdefault(h.region, str(h.interface.network))
        for r, c in cidrs.items():
            ipaddress.ip_network(c)  # raises on junk
        with self.state.update() as d:
            merged = dict(d["probes"].get("region_cidrs", {}))
            merged.update(cidrs)
            d["probes"]["region_cidrs"] = merged
        self._ensure_wan()
        for i, h in enumerate(hosts):
            self.add_host(h, sysctls=sysctls)

    def _validate(self, hosts: Sequence[HostSpec]) -> None:
        seen_names, seen_ips, seen_ns = set(self.hosts()), set(), set()
        for h in self.hosts().values():
            seen_ips.add(str(ipaddress.IPv4Interface(h["address"]).ip))
            seen_ns |= {h["netns"], h["wan_if"]}
        for h in hosts:
            if not NAME_RE.match(h.name) or h.name == "wan" or h.name == "probe":
                raise ValueError(f"bad host name {h.name!r} (use [a-z0-9-], not wan/probe)")
            if h.name in seen_names:
                raise ValueError(f"duplicate host {h.name!r}")
            ns, wif = self.ns_name(h.name), self.wan_if_name(h.name)
            if ns in seen_ns or wif in seen_ns:
                raise ValueError(f"hosts collide on shortened name {ns!r}/{wif!r}")
            if h.ip in seen_ips:
                raise ValueError(f"duplicate address {h.ip}")
            if not h.interface.ip.is_private:
                raise ValueError(f"{h.address}: lab addresses must be private")
            seen_names.add(h.name)
            seen_ns |= {ns, wif}
            seen_ips.add(h.ip)

    def _ensure_wan(self) -> None:
        if self.wan_ns in self.state.read()["namespaces"] and self.wan_ns in list_netns():
            return
        if self.wan_ns in list_netns():
            raise LabError(f"namespace {self.wan_ns} exists but is not in {self.state.path}; "
                           f"run teardown first")
        self.state.record("namespaces", self.wan_ns, {"role": "wan"})
        run(["ip", "netns", "add", self.wan_ns])
        run(["ip", "-n", self.wan_ns, "link", "set", "lo", "up"])
        self.state.record("interfaces", f"{self.wan_ns}/{self.bridge}",
                          {"netns": self.wan_ns, "name": self.bridge, "kind": "bridge"})
        run(["ip", "-n", self.wan_ns, "link", "add", self.bridge, "type", "bridge",
             "stp_state", "0", "forward_delay", "0"])
        run(["ip", "-n", self.wan_ns, "link", "set", self.bridge, "up"])
        self._sysctl_ns(self.wan_ns, DEFAULT_SYSCTLS)

    def add_host(self, spec: HostSpec, sysctls: Mapping[str, str] | None = None) -> None:
        """Add one host namespace to an existing lab (build() calls this per host)."""
        self._validate([spec])
        self._ensure_wan()
        ns, wif = self.ns_name(spec.name), self.wan_if_name(spec.name)
        if ns in list_netns():
            raise LabError(f"namespace {ns} already exists; run teardown first")
        cidrs = self.region_cidrs()
        cidrs.setdefault(spec.region, str(spec.interface.network))
        own = spec.interface.network
        routes = sorted(c for c in set(cidrs.values())
                        if not ipaddress.ip_network(c).subnet_of(own))
        queue = len(self.hosts())
        self.state.record("namespaces", ns, {"role": "host", "host": spec.name})
        self.state.record("hosts", spec.name, {
            "region": spec.region, "address": spec.address, "netns": ns, "wan_if": wif,
            "routes": routes, "queue": queue})
        with self.state.update() as d:
            d["probes"].setdefault("region_cidrs", {}).setdefault(spec.region, str(own))
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        self.state.record("interfaces", f"{self.wan_ns}/{wif}",
                          {"netns": self.wan_ns, "name": wif, "kind": "veth",
                           "peer": f"{ns}/eth0"})
        run(["ip", "-n", self.wan_ns, "link", "add", wif, "type", "veth",
             "peer", "name", "eth0", "netns", ns])
        self.state.record("interfaces", f"{ns}/eth0",
                          {"netns": ns, "name": "eth0", "kind": "veth", "peer": wif})
        run(["ip", "-n", self.wan_ns, "link", "set", wif, "master", self.bridge])
        run(["ip", "-n", self.wan_ns, "link", "set", wif, "up"])
        self._sysctl_ns(ns, {**DEFAULT_SYSCTLS, **(sysctls or {})})
        run(["ip", "-n", ns, "addr", "add", spec.address, "dev", "eth0"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        for c in routes:
            run(["ip", "-n", ns, "route", "add", c, "dev", "eth0"])

    def add_region(self, region: str, cidr: str) -> None:
        """A region's network joins the running lab: every host gets its on-link route (as a
        cloud's router would route the new subnet)."""
        ipaddress.ip_network(cidr)
        with self.state.update() as d:
            d["probes"].setdefault("region_cidrs", {})[region] = cidr
        for name, h in self.hosts().items():
            if cidr in h.get("routes", []) or ipaddress.ip_network(cidr).overlaps(
                    ipaddress.IPv4Interface(h["address"]).network):
                continue
            run(["ip", "-n", h["netns"], "route", "replace", cidr, "dev", "eth0"])
            with self.state.update() as d:
                d["hosts"][name]["routes"] = sorted(set(d["hosts"][name]["routes"]) | {cidr})

    def remove_host(self, name: str) -> None:
        """One host out of the running lab: whatever still runs in its namespace is killed,
        the namespace (with its end of the veth pair) deleted, its records dropped."""
        h = self.host(name)
        ns = h["netns"]
        for _ in range(3):
            pids = [p for p in netns_pids(ns) if p != os.getpid()]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        if ns in list_netns():
            run(["ip", "netns", "del", ns], timeout=20)
        with self.state.update() as d:
            d["hosts"].pop(name, None)
            d["namespaces"].pop(ns, None)
            d["interfaces"].pop(f"{ns}/eth0", None)
            d["interfaces"].pop(f"{self.wan_ns}/{h['wan_if']}", None)

    def remove_region(self, region: str) -> None:
        """A region's network leaves the lab (its hosts removed first): the routes go."""
        cidr = self.region_cidrs().get(region)
        if cidr is None:
            return
        for name, h in self.hosts().items():
            if h["region"] == region:
                raise LabError(f"{name} is still in {region}: remove the region's hosts first")
            if cidr in h.get("routes", []):
                run(["ip", "-n", h["netns"], "route", "del", cidr, "dev", "eth0"], check=False)
                with self.state.update() as d:
                    d["hosts"][name]["routes"] = [c for c in d["hosts"][name]["routes"] if c != cidr]
        with self.state.update() as d:
            d["probes"].get("region_cidrs", {}).pop(region, None)

    # -- exec / sysctl --------------------------------------------------------------------
    def exec(self, host: str, argv: Sequence[str], *, timeout: float = 30.0,
             check: bool = True, input: str | None = None):
        """Run argv in the host's network namespace (no private bind mounts: see
        lab.procs for VM-like paths). Returns CompletedProcess."""
        return run(["ip", "netns", "exec", self.netns(host), *argv], timeout=timeout,
                   check=check, input=input)

    def _sysctl_ns(self, ns: str, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            path = "/proc/sys/" + key.replace(".", "/")
            run(["ip", "netns", "exec", ns, "sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh",
                 str(value), path])
        if values:
            with self.state.update() as d:
                d["sysctls"].setdefault(ns, {}).update({k: str(v) for k, v in values.items()})

    def set_sysctl(self, host: str, key: str, value: str | int) -> None:
        """Set a (network-namespaced) sysctl in the host's namespace, e.g.
        set_sysctl("proxy-a-1", "net.ipv4.ip_nonlocal_bind", 1)."""
        self._sysctl_ns(self.netns(host), {key: str(value)})

    def get_sysctl(self, host: str, key: str) -> str:
        return self.exec(host, ["cat", "/proc/sys/" + key.replace(".", "/")]).stdout.strip()

    # -- reachability -----------------------------------------------------------------------
    def ping(self, src: str, dst: str, *, count: int = 3, interval: float = 0.2,
             timeout: float = 5.0) -> PingResult:
        """ping from host `src` to `dst` (a lab host name or a lab/loopback address).
        Bounded by count and by `timeout` seconds (ping -w). Never raises on loss."""
        addr = self.ip(dst) if dst in self.hosts() else dst
        if not self.is_lab_address(addr):
            raise LabError(f"refusing to ping {addr}: not a lab address")
        count = max(1, min(int(count), 1000))
        deadline = max(1, min(int(timeout), math.ceil(count * interval + 1)))
        # -U: user-to-user latency; without it ping uses the kernel's receive timestamp,
        # taken before an NFQUEUE delay on the way in, and under-reports that delay
        cp = self.exec(src, ["ping", "-U", "-n", "-q", "-c", str(count), "-i", str(interval),
                             "-W", "1", "-w", str(deadline), addr],
                       timeout=deadline + 5, check=False)
        out = cp.stdout + cp.stderr
        m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", out)
        sent, recv = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        r = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", out)
        mn, avg, mx = (float(r.group(1)), float(r.group(2)), float(r.group(3))) if r else (
            None, None, None)
        return PingResult(sent, recv, mn, avg, mx, out.strip())

    def can_reach(self, src: str, dst: str, timeout: float = 1.0) -> bool:
        """One ping with a 1 s deadline: True if answered."""
        return self.ping(src, dst, count=1, timeout=timeout).ok

    # -- partition ---------------------------------------------------------------------------
    def partition(self, hosts: Iterable[str], peers: Iterable[str] | None = None) -> None:
        """Cut the given hosts off: drop everything on their eth0 in and out, or only
        traffic from/to the `peers` CIDRs/addresses if given. Repeated calls add cuts."""
        peer_list = None if peers is None else sorted(
            str(ipaddress.ip_network(p, strict=False)) for p in peers)
        for host in hosts:
            h = self.host(host)
            with self.state.update() as d:
                cut = d["rules"].setdefault(host, {}).get("partition") or {
                    "all": False, "peers": []}
                if peer_list is None:
                    cut = {"all": True, "peers": []}
                elif not cut["all"]:
                    cut["peers"] = sorted(set(cut["peers"]) | set(peer_list))
                d["rules"][host]["partition"] = cut
            self._apply_partition(h["netns"], cut)

    def partition_region(self, region: str) -> None:
        """Cut a region off the WAN: every host of the region drops traffic from/to the
        other regions' CIDRs (traffic inside the region keeps flowing, as when a region's
        WAN uplink fails). heal(region_hosts(region)) or heal() undoes it."""
        hosts = self.region_hosts(region)
        if not hosts:
            raise LabError(f"no hosts in region {region!r}")
        cidrs = self.region_cidrs()
        others = [c for r, c in cidrs.items() if r != region]
        if not others:
            raise LabError("partition_region needs at least two regions")
        self.partition(hosts, peers=others)

    def heal(self, hosts: Iterable[str] | None = None) -> None:
        """Remove partitions from the given hosts (all partitioned hosts if None)."""
        rules = self.state.read()["rules"]
        targets = list(hosts) if hosts is not None else [
            n for n, r in rules.items() if r.get("partition")]
        for host in targets:
            ns = self.netns(host)
            for fam in ("netdev", "inet"):
                run(["ip", "netns", "exec", ns, "nft", "delete", "table", fam, PART_TABLE],
                    check=False)
            with self.state.update() as d:
                d["rules"].setdefault(host, {}).pop("partition", None)

    def partitioned(self, host: str) -> bool:
        return bool(self.state.read()["rules"].get(host, {}).get("partition"))

    def _apply_partition(self, ns: str, cut: dict) -> None:
        everything, peers = bool(cut["all"]), list(cut["peers"])
        if not everything and not peers:
            return
        use_netdev = self.state.read()["probes"].get("nft_egress", True)
        script = self._partition_script(peers, everything, use_netdev)
        cp = run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, check=False)
        if cp.returncode != 0 and use_netdev:
            # kernel/nft without the netdev egress hook: fall back to inet input/output
            with self.state.update() as d:
                d["probes"]["nft_egress"] = False
            script = self._partition_script(peers, everything, False)
            cp = run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, check=False)
        if cp.returncode != 0:
            raise LabError(f"nft partition in {ns} failed: {cp.stderr.strip()}\n{script}")

    @staticmethod
    def _partition_script(peers: list[str], everything: bool, netdev: bool) -> str:
        if netdev:
            fam = "netdev"
            hook_in = 'type filter hook ingress device "eth0" priority -500; policy accept;'
            hook_out = 'type filter hook egress device "eth0" priority -500; policy accept;'
            m_in = m_out = ""
        else:
            fam = "inet"
            hook_in = "type filter hook input priority -10; policy accept;"
            hook_out = "type filter hook output priority -10; policy accept;"
            m_in, m_out = 'iifname "eth0" ', 'oifname "eth0" '
        if everything:
            r_in, r_out = f"{m_in}drop", f"{m_out}drop"
        else:
            s = ", ".join(peers)
            r_in = f"{m_in}ip saddr {{ {s} }} drop"
            r_out = f"{m_out}ip daddr {{ {s} }} drop"
        return (f"table {fam} {PART_TABLE}\ndelete table {fam} {PART_TABLE}\n"
                f"table {fam} {PART_TABLE} {{\n"
                f"  chain cut_in {{ {hook_in}\n    {r_in}\n  }}\n"
                f"  chain cut_out {{ {hook_out}\n    {r_out}\n  }}\n}}\n")

    # -- link ------------------------------------------------------------------------------
    def link_down(self, host: str) -> None:
        """Cut the host's cable: the WAN-side veth end goes down (the host keeps its
        addresses and routes; eth0 shows NO-CARRIER). Simulates a dead host/region."""
        run(["ip", "-n", self.wan_ns, "link", "set", self.host(host)["wan_if"], "down"])
        with self.state.update() as d:
            d["rules"].setdefault(host, {})["link_down"] = True

    def link_up(self, host: str) -> None:
        run(["ip", "-n", self.wan_ns, "link", "set", self.host(host)["wan_if"], "up"])
        with self.state.update() as d:
            d["rules"].setdefault(host, {}).pop("link_down", None)

    def region_down(self, region: str) -> None:
        for h in self.region_hosts(region):
            self.link_down(h)

    def region_up(self, region: str) -> None:
        for h in self.region_hosts(region):
            self.link_up(h)

    def is_link_up(self, host: str) -> bool:
        """True unless link_down() cut the host's cable (admin state of the WAN port)."""
        out = run(["ip", "-n", self.wan_ns, "-o", "link", "show",
                   self.host(host)["wan_if"]]).stdout
        flags = out[out.find("<") + 1:out.find(">")].split(",")
        return "UP" in flags

    # -- latency ---------------------------------------------------------------------------
    def latency_mode(self) -> str:
        """'netem' if the kernel has the netem qdisc (probed once, cached in state), else
        'nfqueue'."""
        probes = self.state.read()["probes"]
        if "netem" not in probes:
            ok = probe_netem(self.prefix)
            with self.state.update() as d:
                d["probes"]["netem"] = ok
            return "netem" if ok else "nfqueue"
        return "netem" if probes["netem"] else "nfqueue"

    def set_latency(self, host: str, ms: float, peers: Iterable[str] | None = None,
                    loss_pct: float = 0.0, direction: str | None = None,
                    python: str | None = None) -> str:
        """Add `ms` milliseconds of one-way delay on the host's eth0 (and drop loss_pct
        percent), for all traffic or only traffic exchanged with the `peers` CIDRs.
        Replaces any previous setting on that host. For an RTT of 2*ms between X and Y,
        set it on both X (peers=[Y]) and Y (peers=[X]).

        direction: "out" delays what the host sends (netem, or NFQUEUE in OUTPUT), "in"
        what it receives (NFQUEUE in INPUT; not with netem). Default: "out" with netem,
        "in" with the NFQUEUE delayer, because a packet held in OUTPUT still counts against
        its socket's TCP Small Queues budget, which throttles a TCP stream to well under
        1 MB/s at 50 ms, while netem (which orphans the packet) and INPUT (the veth
        already orphaned it) do not. Returns "netem/out", "nfqueue/in" or "nfqueue/out".
        """
        if direction not in (None, "in", "out"):
            raise ValueError("direction must be 'in', 'out' or None")
        self.clear_latency(host)
        h = self.host(host)
        ns = h["netns"]
        nets = None if peers is None else sorted(
            str(ipaddress.ip_network(t, strict=False)) for t in peers)
        mode = self.latency_mode()
        if mode == "netem":
            if direction == "in":
                raise LabError("netem delays egress only: use direction='out'")
            direction = "out"
            self._netem(ns, ms, nets, loss_pct)
        else:
            direction = direction or "in"
            self._nfqueue(host, ns, int(h["queue"]), ms, nets, loss_pct, direction, python)
        with self.state.update() as d:
            d["rules"].setdefault(host, {})["latency"] = {
                "ms": ms, "peers": nets, "loss_pct": loss_pct, "mode": mode,
                "direction": direction}
        return f"{mode}/{direction}"

    def clear_latency(self, host: str) -> None:
        """Remove added latency/loss from the host (qdisc, or iptables rules + delayer)."""
        ns = self.netns(host)
        lat = self.state.read()["rules"].get(host, {}).get("latency")
        ipt = ["ip", "netns", "exec", ns, "iptables", "-w", "5"]
        for chain, opt in (("INPUT", "-i"), ("OUTPUT", "-o")):
            for _ in range(10):  # bounded: remove every jump we may have added
                if run(ipt + ["-D", chain, opt, "eth0", "-j", DELAY_CHAIN],
                       check=False).returncode != 0:
                    break
        run(ipt + ["-F", DELAY_CHAIN], check=False)
        run(ipt + ["-X", DELAY_CHAIN], check=False)
        if lat and lat.get("mode") == "netem":
            run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root"],
                check=False)
        key = f"{host}/ksl-delayer"
        p = self.state.get("processes", key)
        if p:
            stop_process(p["pid"], p.get("starttime"), pgid=p.get("pgid"), timeout=3)
            self.state.forget("processes", key)
        with self.state.update() as d:
            d["rules"].setdefault(host, {}).pop("latency", None)

    def latency(self, host: str) -> dict | None:
        return self.state.read()["rules"].get(host, {}).get("latency")

    def _netem(self, ns: str, ms: float, dsts: list[str] | None, loss_pct: float) -> None:
        # NOTE: not exercised on the development machine (its kernel has no netem)
        netem = ["netem", "delay", f"{ms}ms"] + (["loss", f"{loss_pct}%"] if loss_pct else [])
        tc = ["ip", "netns", "exec", ns, "tc"]
        if dsts is None:
            run(tc + ["qdisc", "replace", "dev", "eth0", "root"] + netem)
            return
        # prio with a 4th band that only the u32 filters feed; the default priomap keeps
        # all other traffic in bands 1-3; band 4 gets netem
        run(tc + ["qdisc", "replace", "dev", "eth0", "root", "handle", "1:", "prio",
                  "bands", "4", "priomap"] + "1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1".split())
        run(tc + ["qdisc", "add", "dev", "eth0", "parent", "1:4", "handle", "40:"] + netem)
        for d in dsts:
            run(tc + ["filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip",
                      "prio", "1", "u32", "match", "ip", "dst", d, "flowid", "1:4"])

    def _nfqueue(self, host: str, ns: str, queue: int, ms: float, nets: list[str] | None,
                 loss_pct: float, direction: str, python: str | None) -> None:
        py = python or sys.executable
        log = self.state.host_dir(host, "log", "ksl-delayer.log")
        argv = ["ip", "netns", "exec", ns, py, DELAYER, "--queue", str(queue),
                "--delay-ms", str(ms), "--loss-pct", str(loss_pct)]
        p = spawn_detached(argv, log_path=log)
        st = proc_starttime(p.pid)
        self.state.record("processes", f"{host}/ksl-delayer", {
            "pid": p.pid, "starttime": st, "pgid": p.pid, "netns": ns, "argv": argv,
            "log": log, "host": host, "name": "ksl-delayer", "started": time.time()})

        def bound() -> bool:
            if p.poll() is not None:
                raise LabError(f"delayer in {ns} exited rc={p.returncode}: "
                               f"{tail(log)}")
            cp = run(["ip", "netns", "exec", ns, "cat", "/proc/net/netfilter/nfnetlink_queue"],
                     check=False)
            return any(line.split()[:1] == [str(queue)] for line in cp.stdout.splitlines())

        try:
            wait_for(bound, timeout=10, interval=0.05, what=f"delayer queue {queue} in {ns}")
            # iptables (nft or legacy backend) rather than native nft `queue`: this kernel's
            # nftables has no nft_queue expression, while xt NFQUEUE works
            ipt = ["ip", "netns", "exec", ns, "iptables", "-w", "5"]
            chain, io, addr = (("INPUT", "-i", "-s") if direction == "in"
                               else ("OUTPUT", "-o", "-d"))
            run(ipt + ["-N", DELAY_CHAIN])
            for n in (nets or [None]):
                run(ipt + ["-A", DELAY_CHAIN] + ([addr, n] if n else []) +
                    ["-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"])
            run(ipt + ["-A", chain, io, "eth0", "-j", DELAY_CHAIN])
        except BaseException:
            self.clear_latency(host)
            raise

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """What exists now: per host its namespace, eth0 state/address, routes, partition,
        latency and link state; plus unexpected prefix namespaces."""
        d = self.state.read()
        present = set(list_netns(self.prefix))
        out: dict[str, Any] = {"wan": {"netns": self.wan_ns, "present": self.wan_ns in present,
                                       "bridge": self.bridge},
                               "hosts": {}, "stray_namespaces": sorted(
                                   present - set(d["namespaces"]))}
        for name, h in sorted(d["hosts"].items()):
            info: dict[str, Any] = {"region": h["region"], "address": h["address"],
                                    "netns": h["netns"], "present": h["netns"] in present}
            if info["present"]:
                cp = run(["ip", "-n", h["netns"], "-br", "addr", "show", "eth0"], check=False)
                info["eth0"] = " ".join(cp.stdout.split()[1:])
                cp = run(["ip", "-n", h["netns"], "route", "show"], check=False)
                info["routes"] = [r.strip() for r in cp.stdout.splitlines()]
                info["pids"] = len(netns_pids(h["netns"]))
            r = d["rules"].get(name, {})
            info["partition"] = r.get("partition")
            info["latency"] = r.get("latency")
            info["link_down"] = bool(r.get("link_down"))
            out["hosts"][name] = info
        return out
