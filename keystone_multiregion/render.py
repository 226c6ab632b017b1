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

from .secrets import ROLE_SECRETS, require_secrets
from .security import PORTS
from .topology import Node, Topology

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
FACTS_PATH = "/etc/keystone-multiregion/node.json"
GALERA_DATA_LABEL = "galera-data"
GALERA_DATADIR = "/var/lib/mysql"
MEMCACHED_MEMORY_MB = 512  # source design: 512 MB of cache per memcached node

# What each role installs from the distribution.
ROLE_PACKAGES: dict[str, tuple[str, ...]] = {
    "galera": ("mariadb-server", "mariadb-backup", "galera-4", "socat"),
    "arbitrator": ("galera-arbitrator-4",),
    "keystone": ("keystone", "uwsgi-plugin-python3", "python3-memcache"),
    "memcached": ("memcached",),
    "proxy": ("haproxy", "keepalived"),
}

# (template under templates/, path on the node, permissions)
ROLE_FILES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "galera": (("galera/root-my.cnf.j2", "/root/.my.cnf", "0600"),),
    "arbitrator": (),
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
    return _ENV.get_template(name).render(**context)


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


def render_node(topo: Topology, node_name: str, secrets: Mapping[str, str]) -> RenderedNode:
    node = topo.node(node_name)
    needed = require_secrets(node.role, secrets)
    context = {
        "node": node,
        "region": topo.region(node.region),
        "topology": topo,
        "secrets": needed,
        "memory_mb": MEMCACHED_MEMORY_MB,
        "port": PORTS["memcached"],
    }
    files = [File(FACTS_PATH, json.dumps(node_facts(topo, node), indent=2, sort_keys=True) + "\n")]
    for template, path, perms in ROLE_FILES[node.role]:
        files.append(File(path, render_template(template, **context), permissions=perms))
    files_t = tuple(files)
    body = yaml.dump(cloud_config(topo, node, files_t), Dumper=_LiteralDumper, sort_keys=False,
                     default_flow_style=False, width=120)
    header = f"#cloud-config\n# Generated by keystone-multiregion for {node.name} ({node.role}, {node.region}).\n"
    return RenderedNode(node=node, files=files_t, user_data=header + body, secret=bool(ROLE_SECRETS[node.role]))


def render_region(topo: Topology, region: str, secrets: Mapping[str, str]) -> tuple[RenderedNode, ...]:
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
