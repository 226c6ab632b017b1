"""Render every node's configuration files and its cloud-init document.

Plain data in, plain text out. Each configuration file comes from one jinja2 template
(StrictUndefined: a missing value is an error, never an empty string); the cloud-config
document is built as a dict and dumped with PyYAML, carrying those files byte for byte
in ``write_files``. The Pulumi components pass the result as ``user_data``; the offline
render writes it to disk for reviewers; the local lab runs the daemons on the same files.
"""

from __future__ import annotations

import base64
import gzip
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


# Nova refuses user data over 65535 bytes, base64-encoded. A Galera node's cloud-config is
# about 140 KB (it carries the node's programs), so every node's goes gzip-compressed, which
# cloud-init detects and decompresses (cloudinit.user_data.convert_string), and
# base64-encoded, which gophercloud (under pulumi-openstack) passes to Nova unchanged.
NOVA_USER_DATA_LIMIT = 65535


class UserDataTooLarge(ValueError):
    pass


def encode_user_data(text: str, node_name: str) -> str:
    """The cloud-config as the instance's user_data: gzip (no timestamp, so the same document
    always gives the same value and a preview shows no change), then base64."""
    data = base64.b64encode(gzip.compress(text.encode(), compresslevel=9, mtime=0)).decode("ascii")
    if len(data) > NOVA_USER_DATA_LIMIT:
        raise UserDataTooLarge(
            f"{node_name}: its cloud-init document is {len(data)} bytes gzip-compressed and base64-encoded, over "
            f"Nova's limit of {NOVA_USER_DATA_LIMIT} bytes: the instance would be refused. Fix: fewer or smaller "
            "files in the role's cloud-init (keystone_multiregion/roles), e.g. a file pushed after boot instead")
    return data


def decode_user_data(data: str) -> str:
    return gzip.decompress(base64.b64decode(data, validate=True)).decode()


def user_data_sizes(topo: Topology, secrets: Mapping) -> dict[str, tuple[int, str]]:
    """role -> (bytes, node): the largest user_data of each role as Nova gets it, rendered
    with `secrets`. Raises UserDataTooLarge naming the first node over the limit."""
    largest: dict[str, tuple[int, str]] = {}
    for node in topo.nodes():
        size = len(render_node(topo, node.name, secrets).encoded_user_data)
        if size > largest.get(node.role, (0, ""))[0]:
            largest[node.role] = (size, node.name)
    return largest


@dataclass(frozen=True)
class RenderedNode:
    node: Node
    files: tuple[File, ...]
    user_data: str  # the cloud-config document, as reviewers read it
    secret: bool  # user_data carries secrets: pass it on as a secret

    @property
    def encoded_user_data(self) -> str:
        """What the instance gets (encode_user_data): refused here if Nova would refuse it."""
        return encode_user_data(self.user_data, self.node.name)


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
