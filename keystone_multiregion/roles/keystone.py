"""The Keystone layer: API nodes served by uwsgi, Fernet tokens, cache on memcached."""

from __future__ import annotations

from ..security import PORTS
from ..topology import Node, Topology
from .base import File, RoleLayer
from .galera import DENY_SERVICE_START

KEYSTONE_NODE_TOOL = "/usr/local/sbin/keystone-node"
KEYSTONE_CONF = "/etc/keystone/keystone.conf"
UWSGI_INI = "/etc/keystone/keystone-multiregion-uwsgi.ini"
WSGI_FILE = "/usr/local/lib/keystone-multiregion/keystone-wsgi.py"
ADMIN_PASSWORD_FILE = "/etc/keystone/bootstrap-admin-password"
KEY_DIRS = {"fernet_keys": "/etc/keystone/fernet-keys", "credential_keys": "/etc/keystone/credential-keys"}


def is_bootstrap(topo: Topology, node: Node) -> bool:
    """The one Keystone node that runs db_sync and bootstrap: the bootstrap region's first."""
    return node.role == "keystone" and node.region == topo.bootstrap_region and node.number == 1


def db_host(topo: Topology, region: str) -> str:
    """Keystone reaches the database through its region's internal VRRP address."""
    return topo.vips(region, "internal")[0].address


def endpoint_urls(topo: Topology, region: str) -> dict[str, str]:
    """The region's catalog endpoints, unversioned (clients discover /v3 themselves): the
    public one through the region's public name (TLS at the proxies), internal and admin
    through its internal VRRP address."""
    r = topo.region(region)
    internal = f"http://{topo.vips(region, 'internal')[0].address}:{PORTS['keystone']}"
    return {"public": f"https://{r.public_hostname}", "internal": internal, "admin": internal}


def _context(topo: Topology, node: Node, needed: dict) -> dict:
    return {
        "ks": topo.keystone,
        "db_host": db_host(topo, node.region),
        "memcache_servers": [f"{m.address}:{PORTS['memcached']}" for m in topo.nodes(node.region, "memcached")],
        "port": PORTS["keystone"],
        "processes": topo.keystone.uwsgi_processes or node.vcpus,
        "wsgi_file": WSGI_FILE,
    }


def _key_files(topo: Topology, node: Node, needed: dict) -> list[File]:
    files = [File(f"{KEY_DIRS[repo]}/{index}", key + "\n" if not key.endswith("\n") else key, permissions="0600")
             for repo in KEY_DIRS for index, key in sorted(needed[repo].items())]
    if is_bootstrap(topo, node):
        files.append(File(ADMIN_PASSWORD_FILE, needed["keystone_admin_password"] + "\n", permissions="0600"))
    return files


def _cloud_config(topo: Topology, node: Node, doc: dict) -> None:
    # Debian's package would start its own service on 0.0.0.0:5000 with a configuration the
    # node has not finished: the node starts its own unit, on its own address.
    doc["bootcmd"] = [DENY_SERVICE_START]
    doc["runcmd"] = [
        ["rm", "-f", "/usr/sbin/policy-rc.d"],
        ["python3", KEYSTONE_NODE_TOOL, "prepare"],
        ["systemctl", "disable", "--now", "keystone.service"],
        ["python3", KEYSTONE_NODE_TOOL, "bootstrap"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "keystone-api.service"],
        ["python3", KEYSTONE_NODE_TOOL, "wait-ready"],
    ]


KEYSTONE = RoleLayer(
    packages=("keystone", "uwsgi-plugin-python3", "python3-memcache", "python3-pymysql"),
    files=(
        ("keystone/keystone.conf.j2", KEYSTONE_CONF, "0600"),  # keystone-node prepare: 0640 root:keystone
        ("keystone/keystone-uwsgi.ini.j2", UWSGI_INI, "0644"),
        ("keystone/keystone-api.service.j2", "/etc/systemd/system/keystone-api.service", "0644"),
        ("keystone/keystone-node.py", KEYSTONE_NODE_TOOL, "0755"),
        ("keystone/keystone-wsgi.py", WSGI_FILE, "0644"),
    ),
    context=_context, secret_files=_key_files, cloud_config=_cloud_config)

LAYERS = {"keystone": KEYSTONE}
