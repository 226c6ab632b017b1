"""What a role layer gives the renderer: packages, files from templates, extra template
values, its part of the cloud-config document, and files taken from secrets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..topology import Node, Topology

# The agent every node runs for pushed files (agents/node-agent.py; keystone_multiregion/push.py).
NODE_AGENT = "/usr/local/sbin/node-agent"


@dataclass(frozen=True)
class File:
    path: str
    content: str
    permissions: str = "0644"
    owner: str = "root:root"
    # Written by cloud-init at first boot only, never pushed later (the bootstrap password,
    # which the node removes once the deployment has its admin).
    first_boot_only: bool = False
    # Pushed by the region stack only, never written by cloud-init (a secret that must not be
    # in user_data: the backup key and the object store's credentials).
    push_only: bool = False


def _nothing(*_args) -> dict:
    return {}


def _no_files(*_args) -> list:
    return []


def _no_changes(*_args) -> None:
    return None


@dataclass(frozen=True)
class RoleLayer:
    packages: tuple[str, ...]
    # (template under templates/, or a program under agents/ named "agents/<file>", path on
    # the node, permissions). A name ending in .j2 is
    # a jinja2 template; any other file is shipped as it is.
    files: tuple[tuple[str, str, str], ...] = ()
    # Extra template values: (topology, node, needed secrets) -> dict
    context: Callable[[Topology, Node, dict], dict] = field(default=_nothing)
    # Files whose content comes straight from secrets (keys, certificates)
    secret_files: Callable[[Topology, Node, dict], list] = field(default=_no_files)
    # Changes to the node's cloud-config document: (topology, node, doc) -> None
    cloud_config: Callable[[Topology, Node, dict], None] = field(default=_no_changes)
    # What the node agent does when a pushed file changes: {path on the node: action}
    # (keystone_multiregion/push.py lists the actions); unlisted paths: nothing.
    on_change: Mapping[str, str] = field(default_factory=dict)
