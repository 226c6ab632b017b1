"""The rollout gate: does a region serve by itself?

After `pulumi up` of a region stack, the deploy workflow asks the region's public endpoint
at every one of its public VIPs, `samples` times each for GET /v3 and GET /healthcheck, and
passes only when every answer is HTTP 200 and names the region itself in the header its
proxies add (roles/proxy.py: REGION_HEADER, NODE_HEADER). The public endpoint fails over to
the other regions' endpoints when the region's Keystone nodes are all down, so an answer
alone proves nothing: a region whose nodes are dead answers too, named after another region.

    python -m keystone_multiregion gate --region region-a --url https://identity.region-a.example.com \\
        [--address 203.0.113.10 ...] [--ca FILE] [--samples 5] [--wait 900]

Bounded in count and time: every request has a timeout; a round is at most
addresses x paths x samples requests; with --wait, failed rounds are repeated every
--interval seconds until the deadline, then the gate fails with the last reason.
Only the standard library: the workflow runs it with the program's requirements alone.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urlsplit

from .roles.proxy import HEALTHCHECK_URI, NODE_HEADER, REGION_HEADER

PATHS = ("/v3", HEALTHCHECK_URI)
MAX_SAMPLES = 100
MAX_WAIT_S = 3600
BODY_LIMIT = 65536  # an answer's body is read (the connection ends cleanly), never kept


class GateError(ValueError):
    """Bad gate arguments: one line naming the option and the fix."""


@dataclass(frozen=True)
class Answer:
    address: str
    path: str
    status: int | None
    region: str | None = None
    node: str | None = None
    error: str | None = None

    def where(self, url: str) -> str:
        return f"GET {url.rstrip('/')}{self.path} at {self.address}"


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # for SNI and the certificate's name
    port: int
    netloc: str  # for the Host header
    prefix: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.prefix}"


def parse_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise GateError(f"--url {url!r}: give the region's public endpoint, e.g. https://identity.region-a.example.com")
    try:
        port = parts.port or {"https": 443, "http": 80}[parts.scheme]
    except ValueError as exc:
        raise GateError(f"--url {url!r}: {exc}") from None
    if parts.username or parts.query or parts.fragment:
        raise GateError(f"--url {url!r}: give scheme, host (and port, path prefix) only")
    return Target(parts.scheme, parts.hostname, port, parts.netloc, parts.path.rstrip("/"))


def check_bounds(samples: int, wait: float, interval: float, timeout: float) -> None:
    if not 1 <= samples <= MAX_SAMPLES:
        raise GateError(f"--samples {samples}: give 1 to {MAX_SAMPLES} requests per path and address")
    if not 0 <= wait <= MAX_WAIT_S:
        raise GateError(f"--wait {wait}: give 0 to {MAX_WAIT_S} seconds")
    if not 1 <= interval <= 600:
        raise GateError(f"--interval {interval}: give 1 to 600 seconds between rounds")
    if not 0 < timeout <= 120:
        raise GateError(f"--timeout {timeout}: give more than 0 and at most 120 seconds per request")


def ask(target: Target, address: str, path: str, context: ssl.SSLContext | None, timeout: float) -> Answer:
    """One GET on a new connection to `address` (the URL's host when empty), TLS verified
    for the URL's host name (SNI), with the URL's Host header."""
    address = address or target.host
    conn = None
    try:
        raw = socket.create_connection((address, target.port), timeout=timeout)
        sock = context.wrap_socket(raw, server_hostname=target.host) if context else raw
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
        conn.sock = sock
        conn.request("GET", target.prefix + path, headers={"Host": target.netloc, "Connection": "close",
                                                           "User-Agent": "keystone-multiregion-gate"})
        resp = conn.getresponse()
        resp.read(BODY_LIMIT)
        return Answer(address, path, resp.status, resp.getheader(REGION_HEADER), resp.getheader(NODE_HEADER))
    except (OSError, http.client.HTTPException) as exc:
        return Answer(address, path, None, error=f"{type(exc).__name__}: {exc}"[:300])
    finally:
        if conn is not None:
            conn.close()


def judge(region: str, url: str, answers: list[Answer]) -> str | None:
    """None when every answer is HTTP 200 from `region` itself; else why not, in one line."""
    if not answers:
        return f"{region}: no answer was asked for"
    for a in answers:
        if a.status is None:
            return f"{region}: {a.where(url)}: no answer ({a.error})"
        who = f"{a.region or '?'}/{a.node or '?'}"
        if a.status != 200:
            return f"{region}: {a.where(url)} answered HTTP {a.status} (from {who})"
        if a.region is None:
            return (f"{region}: {a.where(url)} answered HTTP 200 without {REGION_HEADER}: the proxies do not say "
                    f"who answered (haproxy.cfg without it?), so the gate cannot tell {region} from its backups")
        if a.region != region:
            return (f"{region}: {a.where(url)} was answered by {a.region} (node {a.node or '?'}), not by {region} "
                    f"itself: {region}'s Keystone nodes do not serve, its proxies fall back on other regions")
    return None


def summary(region: str, url: str, answers: list[Answer]) -> str:
    nodes = Counter(a.node or "?" for a in answers)
    addresses = sorted({a.address for a in answers})
    return (f"{region} serves by itself: {len(answers)} of {len(answers)} answers to {url} HTTP 200 from {region} "
            f"at {', '.join(addresses)} (" + ", ".join(f"{n} x{c}" for n, c in sorted(nodes.items())) + ")")


def one_round(region: str, target: Target, addresses: list[str], paths: tuple[str, ...], samples: int,
              context: ssl.SSLContext | None, timeout: float) -> tuple[list[Answer], str | None]:
    """Every address, every path, `samples` times; stops at the first failing answer."""
    answers: list[Answer] = []
    for address in addresses:
        for _ in range(samples):
            for path in paths:
                answers.append(ask(target, address, path, context, timeout))
                reason = judge(region, target.url, answers[-1:])
                if reason:
                    return answers, reason
    return answers, judge(region, target.url, answers)


def run(region: str, url: str, addresses: list[str] | None = None, ca: str | None = None, samples: int = 5,
        paths: tuple[str, ...] = PATHS, timeout: float = 10.0, wait: float = 0.0, interval: float = 15.0,
        log=print, clock=time.monotonic, sleep=time.sleep) -> tuple[bool, str]:
    """(passed, the one line that says so or why not). Progress lines go to `log`."""
    if not region:
        raise GateError("--region: give the region the stack deploys (its `region` output)")
    target = parse_url(url)
    check_bounds(samples, wait, interval, timeout)
    context = None
    if target.scheme == "https":
        try:
            context = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise GateError(f"--ca {ca}: not a readable PEM CA bundle ({exc})") from None
    elif ca:
        raise GateError(f"--ca {ca}: only for an https:// --url")
    addresses = list(addresses or [""])
    deadline = clock() + wait
    rounds = 1 + int(wait // interval)
    reason = "not asked"
    for n in range(rounds):
        answers, reason = one_round(region, target, addresses, paths, samples, context, timeout)
        if reason is None:
            return True, summary(region, target.url, answers)
        left = deadline - clock()
        if n + 1 == rounds or left <= 0:
            break
        log(f"waiting ({left:.0f} s left): {reason}")
        sleep(min(interval, max(left, 0.0)))
    return False, reason + ("" if wait <= 0 else f" (still after {wait:g} s)")
