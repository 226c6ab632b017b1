"""What a role layer gives the renderer: packages, files from templates, extra template
values, its part of the cloud-config document, and files taken from secrets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..topology import Node, Topology


@dataclass(frozen=True)
class File:
    path: str
    content: str
    permissions: str = "0644"
    owner: str = "root:root"


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
