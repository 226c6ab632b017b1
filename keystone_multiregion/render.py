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

from .roles import LAYERS, File
from .roles.base import NODE_AGENT
from .roles.node import NODE
from .security import PORTS
from .secrets import require_secrets, role_has_secrets
from .topology import Node, Topology

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# The programs that run on the nodes (node agents and their helpers), shipped verbatim; a
# role names them "agents/<file>".
AGENTS = Path(__file__).resolve().parent.parent / "agents"
FACTS_PATH = "/etc/keystone-multiregion/node.json"


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
    if name.startswith("agents/"):
        return (AGENTS / name.removeprefix("agents/")).read_text()
    if not name.endswith(".j2"):
        return (TEMPLATES / name).read_text()
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
        # The one node that may start a new cluster, and only when no cluster exists.
        "galera_bootstrap": node.role == "galera" and node.region == topo.bootstrap_region and node.number == 1,
        # The one Keystone node that runs db_sync and bootstrap.
        "keystone_bootstrap": node.role == "keystone" and node.region == topo.bootstrap_region and node.number == 1,
        # What `node-agent metrics` looks at: the ports it asks, and a proxy's region's VIPs.
        "ports": {k: PORTS[k] for k in ("keystone", "memcached")},
        "vips": [{"name": v.name, "address": v.address} for v in topo.vips(node.region)] if node.role == "proxy" else [],
    }


class _LiteralDumper(yaml.SafeDumper):
    """Dump multi-line strings as literal blocks so embedded files stay readable."""


def _str_representer(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def cloud_config(topo: Topology, node: Node, files: tuple[File, ...], needed: Mapping | None = None) -> dict:
    doc: dict = {
        "hostname": node.name,
        "preserve_hostname": False,
        "manage_etc_hosts": True,
        "package_update": True,
        "packages": list(LAYERS[node.role].packages) + [p for p in NODE.packages if p not in LAYERS[node.role].packages],
        "write_files": [
            {"path": f.path, "content": f.content, "owner": f.owner, "permissions": f.permissions}
            for f in files if not f.push_only
        ],
    }
    host_key = (needed or {}).get("ssh_host_key")
    if host_key:
        # The stack's host key for this node: whoever pushes files to it over SSH pins it.
        doc["ssh_keys"] = {"ed25519_private": host_key["private"], "ed25519_public": host_key["public"]}
    LAYERS[node.role].cloud_config(topo, node, doc)
    NODE.cloud_config(topo, node, doc)  # what every node runs, after the role's own steps
    return doc


def render_node(topo: Topology, node_name: str, secrets: Mapping) -> RenderedNode:
    node = topo.node(node_name)
    needed = require_secrets(node.role, secrets, node_name=node.name, region=node.region,
                             backup_auth_version=topo.backup.store.auth_version if topo.backup else None)
    layer = LAYERS[node.role]
    context = {"node": node, "region": topo.region(node.region), "topology": topo, "secrets": needed,
               **layer.context(topo, node, needed)}
    files = [File(FACTS_PATH, json.dumps(node_facts(topo, node), indent=2, sort_keys=True) + "\n")]
    for template, path, perms in layer.files:
        files.append(File(path, render_template(template, **context), permissions=perms))
    # What every node runs whatever its role (node_exporter and the node's own metrics).
    common = {**context, **NODE.context(topo, node, needed)}
    for template, path, perms in NODE.files:
        files.append(File(path, render_template(template, **common), permissions=perms))
    files += layer.secret_files(topo, node, needed)
    # Every node runs the agent that applies later pushes (keystone_multiregion/push.py).
    files.append(File(NODE_AGENT, render_template("agents/node-agent.py"), permissions="0755"))
    files_t = tuple(files)
    body = yaml.dump(cloud_config(topo, node, files_t, needed), Dumper=_LiteralDumper, sort_keys=False,
                     default_flow_style=False, width=120)
    header = f"#cloud-config\n# Generated by keystone-multiregion for {node.name} ({node.role}, {node.region}).\n"
    return RenderedNode(node=node, files=files_t, user_data=header + body,
                        secret=role_has_secrets(node.role))


def render_region(topo: Topology, region: str, secrets: Mapping) -> tuple[RenderedNode, ...]:
    return tuple(render_node(topo, n.name, secrets) for n in topo.nodes(region))


def _write(path: Path, text: str, mode: int) -> None:
    """`text` into `path` with `mode` from the first byte on: a new file is created with it,
    an existing one (an earlier render) emptied and set to it before anything is written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fd, mode)  # the umask narrowed a new file's mode, an old file kept its own
        fh.write(text)


def write_rendered(rendered: RenderedNode, out_dir: Path) -> Path:
    """Write ``<out>/<region>/<node>/user-data`` (0600 when it carries secrets) and every
    file under ``files/`` with the permissions it gets on the node."""
    node_dir = Path(out_dir) / rendered.node.region / rendered.node.name
    node_dir.mkdir(parents=True, exist_ok=True)
    _write(node_dir / "user-data", rendered.user_data, 0o600 if rendered.secret else 0o644)
    for f in rendered.files:
        target = node_dir / "files" / f.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        _write(target, f.content, int(f.permissions, 8))
    return node_dir
