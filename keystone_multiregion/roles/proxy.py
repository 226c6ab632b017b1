"""The proxy layer: HAProxy and keepalived on the proxy pair of each region.

HAProxy (/etc/haproxy/haproxy.cfg) serves, on the region's VRRP addresses only:

- ``keystone_public``: HTTPS on every public VIP, TLS terminated here with the region's
  public certificate. Servers: the region's own Keystone nodes, then every other
  region's public endpoint as ``backup`` servers (by the private address of each of its
  public VIPs, over the regions' private interconnect, TLS verified against the peer CA
  with the region's host name as SNI and expected name). A request that already came
  from another region's proxy is served by the local Keystone nodes only, so a request
  never travels in a loop when every region's Keystone is down. Every answer names who
  served it (``X-Keystone-Region``, ``X-Keystone-Node``): the proxy whose backend chose a
  local Keystone node sets them, and an answer through another region's endpoint keeps
  what that region's proxy set, so the rollout gate (gate.py) sees whether a region
  serves by itself or through its backups.
- ``keystone_internal``: plain HTTP on the internal VIP, port 5000 (the internal and admin
  endpoints), the same servers. Plain HTTP never crosses the WAN: the security groups admit
  5000 from the region's own network only (security.py), and the backup servers are the
  other regions' public TLS endpoints, never their 5000.
- ``galera``: MySQL (TCP) on the internal VIP, port 3306, for the region's Keystone nodes.
  One Galera node takes every connection (no certification conflicts between writers);
  the others are ``backup`` servers in a fixed order: the region's own nodes, then the
  other regions' nodes (ring order from this region), so a region whose database nodes
  are all gone keeps working through the WAN. Health: Galera's own check on port 9200
  (HTTP 200 only when Synced and Primary), so a non-Primary node is never chosen while a
  Primary one is reachable. When none is (this region cut off from the others), the
  ``galera_degraded`` backend sends connections to the local nodes anyway: they answer
  reads (``wsrep_dirty_reads``) and refuse writes, so tokens keep validating.
- a monitor URI on 127.0.0.1:8404 for keepalived's health script, and a stats socket.

keepalived (/etc/keepalived/keepalived.conf): one VRRP instance per VIP, unicast between
the proxies of the region, PASS authentication; the VIP's master has the highest
priority and the others follow in ring order; a dead HAProxy puts every instance in
FAULT, which gives the addresses up to the other proxy: at once when HAProxy's process ends
(systemd writes HAPROXY_DOWN_FILE from the haproxy.service drop-in, keepalived tracks the
file), and after two failed checks of the monitor URI when HAProxy runs but does not answer.
"""

from __future__ import annotations

from ..security import PORTS
from ..topology import REPLICA, Node, Topology, Vip
from .base import File, RoleLayer

HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
CERT_DIR = "/etc/haproxy/certs"
PUBLIC_PEM = f"{CERT_DIR}/public.pem"
# The CA bundle that verifies the other regions' public endpoints (the backup servers):
# rendered from the `public_ca_cert` secret when the deployment has one (a development
# CA, as in the lab), else the distribution's bundle (certificates from a public CA).
PEER_CA = f"{CERT_DIR}/peer-ca.pem"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
STATS_SOCKET = "/run/haproxy/admin.sock"
# systemd writes 1 here when HAProxy ends and 0 when it runs (HAPROXY_DROPIN); keepalived
# tracks the file and puts every instance in FAULT on a 1.
HAPROXY_DROPIN = "/etc/systemd/system/haproxy.service.d/keystone-multiregion.conf"
HAPROXY_DOWN_DIR = "/run/keystone-multiregion"
HAPROXY_DOWN_FILE = f"{HAPROXY_DOWN_DIR}/haproxy-down"
# HAProxy's liveness for keepalived: loopback only.
MONITOR_ADDRESS = "127.0.0.1"
MONITOR_PORT = 8404
MONITOR_URI = "/healthz"
# The interface that carries the region's network (and the VIPs) on the VM.
VRRP_INTERFACE = "eth0"
MASTER_PRIORITY = 150
BACKUP_PRIORITY = 100
# A request forwarded to another region carries this header; that region then serves it
# from its own Keystone nodes only (no second hop, no loop).
FORWARDED_HEADER = "X-Keystone-Multiregion-Forwarded"
# Who answered a Keystone request: the region and the server, set by the proxy whose
# backend chose a local Keystone node (an answer through another region's endpoint keeps
# the names that region's proxy set). The rollout gate reads them (keystone_multiregion/gate.py).
REGION_HEADER = "X-Keystone-Region"
NODE_HEADER = "X-Keystone-Node"
HEALTHCHECK_URI = "/healthcheck"


def ring_after(topo: Topology, region: str) -> list[str]:
    """The other regions that serve an endpoint, in ring order starting after `region`
    (region-a: b, c; region-b: c, a; ...), so failover load spreads over the regions."""
    serving = [r.name for r in topo.regions if not r.witness and topo.vips(r.name)]
    if region not in serving:
        return serving
    i = serving.index(region)
    return serving[i + 1:] + serving[:i]


def priorities(topo: Topology, vip: Vip) -> dict[str, int]:
    """VRRP priority of every proxy of the region for one VIP: the master highest, the
    others one lower each in ring order after it (distinct, so the order is explicit)."""
    names = [p.name for p in topo.nodes(vip.region, "proxy")]
    start = names.index(vip.master)
    out = {}
    for k in range(len(names)):
        name = names[(start + k) % len(names)]
        out[name] = MASTER_PRIORITY if k == 0 else BACKUP_PRIORITY - (k - 1)
    return out


def keystone_backups(topo: Topology, region: str) -> list[dict]:
    """Every other region's public endpoint, one server per public VIP."""
    out = []
    for other in ring_after(topo, region):
        host = topo.region(other).public_hostname
        for vip in topo.vips(other, "public"):
            out.append({"name": vip.name, "address": vip.address, "hostname": host, "region": other})
    return out


def backups_by_region(backups: list[dict]) -> list[dict]:
    """The backup servers grouped by the region behind them, in ring order:
    [{"region": "region-b", "servers": ["vip-region-b-public-1", ...]}, ...]."""
    out: list[dict] = []
    for b in backups:
        if not out or out[-1]["region"] != b["region"]:
            out.append({"region": b["region"], "servers": []})
        out[-1]["servers"].append(b["name"])
    return out


def local_database(topo: Topology, region: str) -> tuple[Node, ...]:
    """The region's own database nodes: its Galera nodes, or a replica region's replicas."""
    return topo.nodes(region, REPLICA if topo.region(region).replica else "galera")


def galera_servers(topo: Topology, region: str) -> list[dict]:
    """Database servers in the order they take over: the first is the writer. A replica
    region's are its own replicas only: Keystone there reads, and never writes to the core
    behind the proxies' back (writes go to a core region's endpoint, WRITE_ROUTES)."""
    nodes = list(local_database(topo, region))
    for other in ([] if topo.region(region).replica else ring_after(topo, region)):
        nodes += topo.nodes(other, "galera")
    return [{"name": n.name, "address": n.address, "region": n.region, "backup": i > 0}
            for i, n in enumerate(nodes)]


# Which requests a replica region's proxies send to a core region (its database is a read-only
# replica). Every method that may write goes to the core, except the requests that only read
# the database in the common case: token issue (Fernet tokens are not stored) and the EC2/S3
# credential checks that issue one. Verified in Keystone 22's source (Debian 12's):
# - POST /v3/auth/tokens writes nothing for a correct password, a token, TOTP or an
#   application credential; it DOES write when a password is wrong (identity/backends/sql.py
#   _record_failed_auth: local_user.failed_auth_count and failed_auth_at, whatever
#   [security_compliance] says), on the next good password after one (_reset_failed_auth),
#   for a trust with limited uses (trust consume_use), on a federated user's first login
#   (shadow_federated_user), and with [security_compliance] disable_user_account_days_inactive
#   (set_last_active_at; not set by this project). Those are refused by the read-only replica:
#   the Keystone wrapper sends them once more to a core region (WRITE_ELSEWHERE_HEADER).
# - DELETE /v3/auth/tokens (revocation) writes a revocation event: to the core.
# - GET, HEAD, OPTIONS read only: local (token validation never leaves the region).
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
LOCAL_WRITE_ROUTES = (
    ("POST", r"^/v3/auth/tokens/?$"),
    ("POST", r"^/v3/ec2tokens/?$"),
    ("POST", r"^/v3/s3tokens/?$"),
)
# A request a replica region's Keystone found to write after all (a login that records a failed
# attempt or resets one): its wrapper (agents/keystone-wsgi.py) sends it once more, whole, to the
# region's internal endpoint with this header, and the proxies send it to a core region. HAProxy
# cannot do that by itself: a retry (retry-on) stays in its backend, never another one.
WRITE_ELSEWHERE_HEADER = "X-Keystone-Write-Elsewhere"
# What a replica region answers for a write while no core region's endpoint is reachable.
CORE_UNREACHABLE = ('{"error": {"code": 503, "title": "Service Unavailable", "message": "This region reads from '
                    'replicas and sends changes to a core region, and no core region answers: it serves reads '
                    '(token issue and validation) but refuses changes until a core region is reachable. Retry '
                    'later, or make the change through the endpoint of a core region."}}')


def core_servers(topo: Topology, region: str) -> list[dict]:
    """A replica region's write backend: the core regions' public endpoints, its source
    regions first (in their order), then the other core regions; one server per public VIP.
    The first region's servers take the writes, the others are backups."""
    r = topo.region(region)
    order = list(r.sources) + [c.name for c in topo.regions if c.core and c.name not in r.sources]
    out = []
    for i, other in enumerate(order):
        host = topo.region(other).public_hostname
        for vip in topo.vips(other, "public"):
            out.append({"name": vip.name, "address": vip.address, "hostname": host, "region": other,
                        "backup": i > 0})
    return out


def write_routes(topo: Topology, region: str) -> dict | None:
    """The write routing of a replica region's proxies (None in a core region)."""
    if not topo.region(region).replica:
        return None
    return {"methods": list(WRITE_METHODS),
            "local": [{"method": m, "path": p} for m, p in LOCAL_WRITE_ROUTES],
            "core_servers": core_servers(topo, region),
            "unreachable_body": CORE_UNREACHABLE, "elsewhere_header": WRITE_ELSEWHERE_HEADER}


# How the proxies check the Galera nodes (port 9200): a node whose check fails `fall` times
# `inter_s` apart is marked down (its sessions cut), `rise` passes bring it back. node-agent
# drains a member for that long before a planned restart (keystone_multiregion/push.py).
GALERA_CHECK = {"inter_s": 2, "fall": 2, "rise": 3}


# Headers Keystone trusts for the client's address, scheme, host and path prefix
# (oslo.middleware's HTTPProxyToWSGI): never taken from a client, set by HAProxy alone.
CLIENT_FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
                             "X-Forwarded-Port", "X-Forwarded-Prefix")


def _context(topo: Topology, node: Node, needed: dict) -> dict:
    region = topo.region(node.region)
    vips = topo.vips(node.region)
    proxies = topo.nodes(node.region, "proxy")
    instances = []
    for vip in vips:
        prio = priorities(topo, vip)
        instances.append({
            "vip": vip, "state": "MASTER" if vip.master == node.name else "BACKUP",
            "priority": prio[node.name],
            "peers": [p.address for p in proxies if p.name != node.name],
        })
    return {
        "public_vips": [v for v in vips if v.kind == "public"],
        "internal_vips": [v for v in vips if v.kind == "internal"],
        "prefixlen": region.network.prefixlen,
        "ports": PORTS,
        "keystone_nodes": topo.nodes(node.region, "keystone"),
        "keystone_backups": keystone_backups(topo, node.region),
        "keystone_backup_regions": backups_by_region(keystone_backups(topo, node.region)),
        "galera_servers": galera_servers(topo, node.region),
        "local_galera": local_database(topo, node.region),
        "write_routes": write_routes(topo, node.region),
        "public_pem": PUBLIC_PEM,
        "peer_ca": PEER_CA if needed.get("public_ca_cert") else SYSTEM_CA_BUNDLE,
        "stats_socket": STATS_SOCKET,
        "haproxy_down_file": HAPROXY_DOWN_FILE, "haproxy_down_dir": HAPROXY_DOWN_DIR,
        "monitor_address": MONITOR_ADDRESS, "monitor_port": MONITOR_PORT, "monitor_uri": MONITOR_URI,
        "metrics_port": PORTS["haproxy_metrics"],
        "forwarded_header": FORWARDED_HEADER,
        "region_header": REGION_HEADER, "node_header": NODE_HEADER,
        "client_forwarding_headers": CLIENT_FORWARDING_HEADERS,
        "galera_check": GALERA_CHECK,
        "healthcheck_uri": HEALTHCHECK_URI,
        "interface": VRRP_INTERFACE,
        "instances": instances,
        "vrrp_password": needed["vrrp_password"],
    }


def _secret_files(topo: Topology, node: Node, needed: dict) -> list[File]:
    # HAProxy's format: the certificate chain followed by the key, in one file.
    cert = needed["public_cert"] if needed["public_cert"].endswith("\n") else needed["public_cert"] + "\n"
    files = [File(PUBLIC_PEM, cert + needed["public_key"], permissions="0600")]
    if needed.get("public_ca_cert"):
        files.append(File(PEER_CA, needed["public_ca_cert"], permissions="0644"))
    return files


def _cloud_config(topo: Topology, node: Node, doc: dict) -> None:
    # The packages start both daemons on install, before ip_nonlocal_bind is set: HAProxy
    # cannot bind a VIP this proxy does not hold yet and systemd may give up restarting it.
    # Apply the sysctl file, clear that failure, then (re)start both, HAProxy first
    # (keepalived's health script asks it).
    doc["runcmd"] = [
        ["sysctl", "--system"],
        ["systemctl", "reset-failed", "haproxy.service", "keepalived.service"],
        ["systemctl", "enable", "haproxy.service", "keepalived.service"],
        ["systemctl", "restart", "haproxy.service"],
        ["systemctl", "restart", "keepalived.service"],
    ]


PROXY = RoleLayer(
    # curl: keepalived's health script asks HAProxy's monitor URI with it.
    packages=("haproxy", "keepalived", "curl", "ca-certificates"),
    files=(
        ("proxy/sysctl.conf.j2", "/etc/sysctl.d/60-keystone-multiregion.conf", "0644"),
        ("proxy/haproxy.cfg.j2", HAPROXY_CFG, "0644"),
        ("proxy/haproxy-service.conf.j2", HAPROXY_DROPIN, "0644"),
        ("proxy/keepalived.conf.j2", KEEPALIVED_CONF, "0600"),  # carries the VRRP password
    ),
    context=_context, secret_files=_secret_files, cloud_config=_cloud_config,
    on_change={HAPROXY_CFG: "haproxy:reload", PUBLIC_PEM: "haproxy:reload", PEER_CA: "haproxy:reload",
               KEEPALIVED_CONF: "keepalived:reload", HAPROXY_DROPIN: "systemd:daemon-reload", "/etc/sysctl.d/60-keystone-multiregion.conf": "sysctl:apply"})

LAYERS = {"proxy": PROXY}
