"""The Keystone layer: API nodes served by uwsgi, Fernet tokens, cache on memcached."""

from __future__ import annotations

import shlex

from ..security import PORTS
from ..topology import Node, Topology
from .base import File, RoleLayer
from .galera import DENY_SERVICE_START

KEYSTONE_NODE_TOOL = "/usr/local/sbin/keystone-node"
KEYSTONE_CONF = "/etc/keystone/keystone.conf"
UWSGI_INI = "/etc/keystone/keystone-multiregion-uwsgi.ini"
WSGI_FILE = "/usr/local/lib/keystone-multiregion/keystone-wsgi.py"
# TLS-or-nothing database driver (agents/keystone_dbtls.py) and the
# keystone-manage that loads it, ahead of Debian's /usr/bin/keystone-manage on PATH.
DBTLS_MODULE = "/usr/local/lib/keystone-multiregion/keystone_dbtls.py"
KEYSTONE_MANAGE = "/usr/local/bin/keystone-manage"
DB_DRIVER = "mysql+tlspymysql"
# Keystone's caches that carry authorization data, each bounded like validated tokens
# (keystone.token_cache_s): a write invalidates only the writing region's memcached, so in
# every other region this is how long a removed role, a disabled user or project, a deleted
# application credential keeps working. ([role] covers role assignments, including the
# computed ones token validation reads; Keystone has no [assignment] cache option.)
# Everything else (the catalog) keeps [cache] expiration_time, the design's 60 minutes.
AUTHZ_CACHE_SECTIONS = ("role", "resource", "identity", "application_credential", "receipt", "domain_config")
ADMIN_PASSWORD_FILE = "/etc/keystone/bootstrap-admin-password"
DB_CA_FILE = "/etc/keystone/galera-ca.pem"  # verifies the Galera nodes' certificates
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


# The identity service exists once in the catalog (the bootstrap region's stack creates it).
IDENTITY_SERVICE = {"name": "keystone", "type": "identity", "description": "OpenStack Identity"}
CATALOG_INTERFACES = ("public", "internal", "admin")


def catalog_entries(topo: Topology, region: str) -> dict:
    """What a region's stack registers in the catalog, and nothing else: its region (with a
    description) and its unversioned endpoints of the identity service. The stack's
    components pass exactly this to their resources; the lab registers exactly this through
    Keystone's API (lab/catalog.py)."""
    r = topo.region(region)
    urls = endpoint_urls(topo, region)
    return {"service": dict(IDENTITY_SERVICE),
            "region": {"id": region, "description": f"{topo.name}: {r.public_hostname}"},
            "endpoints": [{"interface": i, "region": region, "url": urls[i]} for i in CATALOG_INTERFACES]}


def _context(topo: Topology, node: Node, needed: dict) -> dict:
    return {
        "ks": topo.keystone,
        "db_host": db_host(topo, node.region),
        "memcache_servers": [f"{m.address}:{PORTS['memcached']}" for m in topo.nodes(node.region, "memcached")],
        "port": PORTS["keystone"],
        "processes": topo.keystone.uwsgi_processes or node.vcpus,
        "wsgi_file": WSGI_FILE,
        "db_ca_path": DB_CA_FILE,
        "db_driver": DB_DRIVER,
        "authz_cache_sections": AUTHZ_CACHE_SECTIONS,
        # A replica region: where the wrapper sends a request its read-only database refused
        # (the region's internal endpoint; its proxies route it to a core region).
        "write_elsewhere": (endpoint_urls(topo, node.region)["internal"]
                            if topo.region(node.region).replica else None),
    }


def _secret_files(topo: Topology, node: Node, needed: dict) -> list[File]:
    # The key repositories are not here: the region stack pushes them (install_keys_argv).
    files = [File(DB_CA_FILE, needed["ca_cert"])]
    if is_bootstrap(topo, node):
        files.append(File(ADMIN_PASSWORD_FILE, needed["keystone_admin_password"] + "\n", permissions="0600",
                          first_boot_only=True))
    return files


def install_keys_argv(import_digests: dict[str, str] | None = None) -> list[str]:
    """How the key repositories reach a Keystone node: this command, run as root on the node
    with the payload (keys.payload) on stdin. The region stack runs it over SSH on every
    push (components/keys.py); the lab runs the very same argv in the node's namespace.
    It waits (bounded) until cloud-init has prepared the node. import_digests ({repository:
    digest}, while the shared stack holds importedKeys): the node accepts exactly those
    repositories wholesale, although their primary was never staged on it."""
    extra = [f"--import-digest={repo}={digest}" for repo, digest in sorted((import_digests or {}).items())]
    return ["python3", KEYSTONE_NODE_TOOL, "install-keys", "--timeout", "1800", *extra]


def install_keys_command(import_digests: dict[str, str] | None = None) -> str:
    """install_keys_argv as the SSH command line (the login user has passwordless sudo, as
    the cloud images' default user does)."""
    return "sudo " + shlex.join(install_keys_argv(import_digests))


def _cloud_config(topo: Topology, node: Node, doc: dict) -> None:
    # Debian's package would start its own service on 0.0.0.0:5000 with a configuration the
    # node has not finished: the node starts its own unit, on its own address, and only
    # once the stack has pushed the key repositories (keystone-api.path waits for them).
    doc["bootcmd"] = [DENY_SERVICE_START]
    doc["runcmd"] = [
        ["rm", "-f", "/usr/sbin/policy-rc.d"],
        ["python3", KEYSTONE_NODE_TOOL, "prepare"],
        ["systemctl", "disable", "--now", "keystone.service"],
        ["python3", KEYSTONE_NODE_TOOL, "bootstrap"],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "keystone-api.path", "keystone-key-check.timer"],
    ]


KEYSTONE = RoleLayer(
    packages=("keystone", "uwsgi-plugin-python3", "python3-memcache", "python3-pymysql"),
    files=(
        ("keystone/keystone.conf.j2", KEYSTONE_CONF, "0600"),  # keystone-node prepare: 0640 root:keystone
        ("keystone/keystone-uwsgi.ini.j2", UWSGI_INI, "0644"),
        ("keystone/keystone-api.service.j2", "/etc/systemd/system/keystone-api.service", "0644"),
        ("agents/keystone-node.py", KEYSTONE_NODE_TOOL, "0755"),
        ("agents/keystone-wsgi.py", WSGI_FILE, "0644"),
        ("agents/keystone_dbtls.py", DBTLS_MODULE, "0644"),
        ("agents/keystone-manage", KEYSTONE_MANAGE, "0755"),
        ("keystone/keystone-api.path", "/etc/systemd/system/keystone-api.path", "0644"),
        ("keystone/keystone-key-check.service", "/etc/systemd/system/keystone-key-check.service", "0644"),
        ("keystone/keystone-key-check.timer", "/etc/systemd/system/keystone-key-check.timer", "0644"),
    ),
    context=_context, secret_files=_secret_files, cloud_config=_cloud_config,
    # uwsgi's graceful reload (SIGHUP: the master re-reads its files, each worker finishes
    # its request first) picks up Keystone's configuration and code.
    on_change={**{path: "keystone:reload" for path in (KEYSTONE_CONF, UWSGI_INI, WSGI_FILE, DBTLS_MODULE, DB_CA_FILE)},
               **{f"/etc/systemd/system/{unit}": "systemd:daemon-reload"
                  for unit in ("keystone-api.service", "keystone-api.path", "keystone-key-check.service",
                               "keystone-key-check.timer")}})

LAYERS = {"keystone": KEYSTONE}
