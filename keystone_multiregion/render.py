"""Render every node's configuration files and its cloud-init document.

Plain data in, plain text out. Each configuration file comes from one jinja2 template
(StrictUndefined: a missing value is an error, never an empty string); the cloud-config
document is built as a dict and dumped with PyYAML, carrying those files byte for byte
in ``write_files``. The Pulumi components pass the result as ``user_data``; the offline
render writes it to disk for reviewers; the local lab runs the daemons on the same files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import jinja2
import yaml

from .secrets import require_secrets, role_has_secrets
from .security import PORTS
from .topology import ARBITRATOR, Node, Topology

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
FACTS_PATH = "/etc/keystone-multiregion/node.json"
GALERA_DATA_LABEL = "galera-data"
GALERA_DATADIR = "/var/lib/mysql"
MEMCACHED_MEMORY_MB = 512  # source design: 512 MB of cache per memcached node
TLS_DIR = "/etc/mysql/ssl"
TLS_PATHS = {"ca": f"{TLS_DIR}/ca.pem", "cert": f"{TLS_DIR}/node-cert.pem", "key": f"{TLS_DIR}/node-key.pem"}
GALERA_CONF = "/etc/mysql/mariadb.conf.d/99-keystone-multiregion.cnf"
GALERA_SST_CONF = "/etc/mysql/mariadb.conf.d/99-keystone-multiregion-sst.cnf"
GALERA_NODE_TOOL = "/usr/local/sbin/galera-node"
SST_USER = "sst"
# Stop Debian's postinst from starting MariaDB with a half-written configuration: the
# node's own start (galera-node start) decides between joining and a new cluster.
DENY_SERVICE_START = ["cloud-init-per", "once", "ksm-deny-service-start", "sh", "-c",
                      "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d"]

# What each role installs from the distribution.
ROLE_PACKAGES: dict[str, tuple[str, ...]] = {
    "galera": ("mariadb-server", "mariadb-backup", "galera-4", "socat"),
    "arbitrator": ("galera-arbitrator-4",),
    "keystone": ("keystone", "uwsgi-plugin-python3", "python3-memcache"),
    "memcached": ("memcached",),
    "proxy": ("haproxy", "keepalived"),
}

# (template under templates/, path on the node, permissions). A name ending in .j2 is a
# jinja2 template; any other file is shipped as it is.
ROLE_FILES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "galera": (
        ("galera/galera.cnf.j2", GALERA_CONF, "0644"),
        ("galera/sst-auth.cnf.j2", GALERA_SST_CONF, "0600"),  # galera-node prepare: 0640 root:mysql
        ("galera/root-my.cnf.j2", "/root/.my.cnf", "0600"),
        ("galera/galera-node.py", GALERA_NODE_TOOL, "0755"),
        ("galera/galera-health.service.j2", "/etc/systemd/system/galera-health.service", "0644"),
    ),
    "arbitrator": (("galera/garbd.j2", "/etc/default/garb", "0644"),),
    "keystone": (),
    "memcached": (("memcached/memcached.conf.j2", "/etc/memcached.conf", "0644"),),
    "proxy": (("proxy/sysctl.conf.j2", "/etc/sysctl.d/60-keystone-multiregion.conf", "0644"),),
}


@dataclass(frozen=True)
class File:
    path: str
    content: str
    permissions: str = "0644"
    owner: str = "root:root"


@dataclass(frozen=True)
class RenderedNode:
    node: Node
    files: tuple[File, ...]
    user_data: str
    secret: bool  # user_data carries secrets: pass it on as a secret


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


_ENV = _environment()


def render_template(name: str, **context) -> str:
    if not name.endswith(".j2"):
        return (TEMPLATES / name).read_text()
    return _ENV.get_template(name).render(**context)


def provider_options(topo: Topology, node: Node) -> list[str]:
    """wsrep_provider_options (and garbd's options): WAN timeouts, segment, gcache, TLS."""
    g = topo.galera
    options = [
        f"gmcast.segment={topo.region(node.region).index}",
        f"evs.keepalive_period={g.evs_keepalive_period}",
        f"evs.suspect_timeout={g.evs_suspect_timeout}",
        f"evs.inactive_timeout={g.evs_inactive_timeout}",
        f"evs.install_timeout={g.evs_install_timeout}",
        f"evs.send_window={g.evs_send_window}",
        f"evs.user_send_window={g.evs_user_send_window}",
        # After all nodes stopped at once, restore the Primary component from the saved view.
        "pc.recovery=TRUE",
    ]
    if node.role == "galera":
        options.append(f"gcache.size={g.gcache_mb}M")
    options += [f"socket.ssl_key={TLS_PATHS['key']}", f"socket.ssl_cert={TLS_PATHS['cert']}",
                f"socket.ssl_ca={TLS_PATHS['ca']}"]
    return options


def node_facts(topo: Topology, node: Node) -> dict:
    """What a node knows about itself and its peers, written to FACTS_PATH."""
    region = topo.region(node.region)
    return {
        "name": node.name,
        "role": node.role,
        "region": node.region,
        "region_index": region.index,
        "address": node.address,
        "deployment": topo.name,
        "bootstrap_region": topo.bootstrap_region,
        "galera_peers": [n.address for n in topo.nodes(role="galera")],
        # The one node that may start a new cluster, and only when no cluster exists.
        "galera_bootstrap": node.role == "galera" and node.region == topo.bootstrap_region and node.number == 1,
    }


class _LiteralDumper(yaml.SafeDumper):
    """Dump multi-line strings as literal blocks so embedded files stay readable."""


def _str_representer(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def cloud_config(topo: Topology, node: Node, files: tuple[File, ...]) -> dict:
    doc: dict = {
        "hostname": node.name,
        "preserve_hostname": False,
        "manage_etc_hosts": True,
        "package_update": True,
        "packages": list(ROLE_PACKAGES[node.role]),
        "write_files": [
            {"path": f.path, "content": f.content, "owner": f.owner, "permissions": f.permissions}
            for f in files
        ],
    }
    if node.role == "galera":
        doc["bootcmd"] = [DENY_SERVICE_START]
        doc["runcmd"] = [
            ["rm", "-f", "/usr/sbin/policy-rc.d"],
            ["python3", GALERA_NODE_TOOL, "prepare"],
            ["python3", GALERA_NODE_TOOL, "start"],
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", "galera-health.service"],
        ]
    if node.role == ARBITRATOR:
        doc["runcmd"] = [["chgrp", "nogroup", TLS_PATHS["key"]], ["chmod", "0640", TLS_PATHS["key"]],
                         ["systemctl", "enable", "--now", "garb.service"]]
    if node.role == "galera":
        # The data volume is attached at boot (a block device of the instance). Make a
        # file system only if it has none (overwrite: false keeps existing data), and
        # mount it by label before the packages install into it.
        doc["fs_setup"] = [{"label": GALERA_DATA_LABEL, "filesystem": "ext4",
                            "device": topo.galera_data_device, "partition": "none", "overwrite": False}]
        doc["mounts"] = [[f"LABEL={GALERA_DATA_LABEL}", GALERA_DATADIR, "ext4",
                          "defaults,nofail,x-systemd.device-timeout=60s", "0", "2"]]
    if node.role == "proxy":
        doc["runcmd"] = [["sysctl", "--system"]]
    return doc


def render_node(topo: Topology, node_name: str, secrets: Mapping) -> RenderedNode:
    node = topo.node(node_name)
    needed = require_secrets(node.role, secrets, node_name=node.name)
    galera_peers = [n.address for n in topo.nodes(role="galera")]
    context = {
        "node": node,
        "region": topo.region(node.region),
        "topology": topo,
        "galera": topo.galera,
        "secrets": needed,
        "memory_mb": MEMCACHED_MEMORY_MB,
        "port": PORTS["memcached"],
        "health_port": PORTS["galera_health"],
        "sst_user": SST_USER,
        "peers": galera_peers if node.role == "galera" else [f"{a}:{PORTS['galera_replication']}" for a in galera_peers],
        "provider_options": provider_options(topo, node) if node.role in ("galera", ARBITRATOR) else [],
        "tls_key_path": TLS_PATHS["key"], "tls_cert_path": TLS_PATHS["cert"], "tls_ca_path": TLS_PATHS["ca"],
    }
    files = [File(FACTS_PATH, json.dumps(node_facts(topo, node), indent=2, sort_keys=True) + "\n")]
    for template, path, perms in ROLE_FILES[node.role]:
        files.append(File(path, render_template(template, **context), permissions=perms))
    if "tls_key" in needed:
        files += [File(TLS_PATHS["ca"], needed["ca_cert"]), File(TLS_PATHS["cert"], needed["tls_cert"]),
                  File(TLS_PATHS["key"], needed["tls_key"], permissions="0600")]
    files_t = tuple(files)
    body = yaml.dump(cloud_config(topo, node, files_t), Dumper=_LiteralDumper, sort_keys=False,
                     default_flow_style=False, width=120)
    header = f"#cloud-config\n# Generated by keystone-multiregion for {node.name} ({node.role}, {node.region}).\n"
    return RenderedNode(node=node, files=files_t, user_data=header + body,
                        secret=role_has_secrets(node.role))


def render_region(topo: Topology, region: str, secrets: Mapping) -> tuple[RenderedNode, ...]:
    return tuple(render_node(topo, n.name, secrets) for n in topo.nodes(region))


def write_rendered(rendered: RenderedNode, out_dir: Path) -> Path:
    """Write ``<out>/<region>/<node>/user-data`` and every file under ``files/``."""
    node_dir = Path(out_dir) / rendered.node.region / rendered.node.name
    node_dir.mkdir(parents=True, exist_ok=True)
    (node_dir / "user-data").write_text(rendered.user_data)
    for f in rendered.files:
        target = node_dir / "files" / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.content)
        os.chmod(target, int(f.permissions, 8))
    return node_dir
