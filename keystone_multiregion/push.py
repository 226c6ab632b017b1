"""What a region stack pushes to a running node, and what the node does with it.

cloud-init writes a node's files once, at first boot. Every later change (a template, a
peer added anywhere, a renewed certificate, a new database grant) reaches running nodes
as a push: the region stack sends the node's rendered files over pinned SSH to its
agent (agents/node-agent.py), which installs what changed and takes the least disruptive
action for it. This module builds that payload: plain data, one source for the stack
(components/push.py) and the lab.

Every file carries the action its change needs (`on_change`); the agent knows how to
carry each one out safely and in this order:
"""

from __future__ import annotations

import hashlib
import json
import shlex
from typing import Mapping

from .render import RenderedNode
from .roles import LAYERS
from .roles.base import NODE_AGENT
from .security import PORTS
from .topology import Topology

# The agent's state directory on the node, and where it records what it applied (the drift
# check compares against it).
STATE_DIR = "/var/lib/keystone-multiregion"
APPLIED = f"{STATE_DIR}/applied.json"

# The actions, in the order the agent runs them (unit files before the services using them;
# the database before the services in front of it).
ACTIONS = (
    "none",                  # read when needed (node facts, agents, key check units)
    "systemd:daemon-reload",  # a unit file or drop-in
    "galera:settings",       # galera.cnf: live where MariaDB allows, else a guarded restart
    "galera:restart",        # TLS material, SST credentials: a guarded restart
    "galera:users",          # databases, users and grants, applied idempotently
    "replica:restart",       # a replica's replica.cnf, replica.json or TLS: only while another
                             # replica of its region is healthy; back replicating before the next
    "garbd:restart",         # the arbitrator's settings or TLS
    "haproxy:reload",        # checked with haproxy -c, reloaded without dropping connections
    "keepalived:reload",     # checked with keepalived -t, reloaded (VRRP state kept)
    "sysctl:apply",          # sysctl --system
    "memcached:restart",     # only while another memcached node of the region answers
    "keystone:reload",       # uwsgi's graceful reload: workers finish their requests
    "exporter:restart",      # a Prometheus exporter's settings (it holds no state)
    "node-exporter:restart",  # node_exporter's settings (every node)
)


def actions_for(role: str) -> Mapping[str, str]:
    """{path on the node: action} for a role's files; paths not listed: "none"."""
    from .roles.node import NODE
    return {**NODE.on_change, **LAYERS[role].on_change}


def health_params(topo: Topology, rendered: RenderedNode) -> dict:
    """What the agent checks after a change, from the topology (one source): the expected
    Galera cluster size, the region's other nodes of the role, the ports."""
    node = rendered.node
    members = len(topo.galera_members)
    from .roles.proxy import GALERA_CHECK, MONITOR_ADDRESS, MONITOR_PORT, MONITOR_URI
    check = GALERA_CHECK
    return {
        # A planned Galera restart: the member's health check fails first (drain), long enough
        # for every proxy to mark it down and move its sessions; after the restart, long
        # enough for them to mark it up again before the next member is touched.
        "galera_drain_s": check["inter_s"] * (check["fall"] + 1),
        "galera_undrain_s": check["inter_s"] * (check["rise"] + 1),
        "galera_cluster_size": members,
        "haproxy_monitor": f"http://{MONITOR_ADDRESS}:{MONITOR_PORT}{MONITOR_URI}",
        "peers": [n.address for n in topo.nodes(node.region, node.role) if n.name != node.name],
        "peer_names": {n.address: n.name for n in topo.nodes(node.region, node.role) if n.name != node.name},
        # galera_health: a replica's health check too (the proxies ask it there).
        "ports": {k: PORTS[k] for k in ("keystone", "memcached", "mysql", "galera_health") if k in PORTS},
    }


def payload(topo: Topology, rendered: RenderedNode) -> dict:
    """The push for one node: every rendered file with the action its change needs."""
    actions = actions_for(rendered.node.role)
    unknown = sorted(set(actions.values()) - set(ACTIONS))
    if unknown:
        raise ValueError(f"{rendered.node.role}: unknown push actions {unknown}")
    return {
        "version": 1,
        "node": rendered.node.name,
        "role": rendered.node.role,
        "files": [{"path": f.path, "content": f.content, "mode": f.permissions,
                   "on_change": actions.get(f.path, "none")} for f in rendered.files if not f.first_boot_only],
        "health": health_params(topo, rendered),
    }


def encode(data: dict) -> str:
    return json.dumps(data, sort_keys=True) + "\n"


def digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def digests(data: dict) -> dict[str, str]:
    """{path: sha256 of its content}: what the agent reports after a push."""
    return {f["path"]: digest(f["content"]) for f in data["files"]}


def apply_argv(timeout_s: int = 1800) -> list[str]:
    """The command a push runs on the node, as root, with the payload on stdin. The region
    stack runs it over SSH (components/push.py); the lab runs the very same line."""
    return ["python3", NODE_AGENT, "apply", "--timeout", str(timeout_s)]


def apply_command() -> str:
    """apply_argv as the SSH command line (the login user has passwordless sudo)."""
    return "sudo " + shlex.join(apply_argv())



# The members of the Galera cluster leave it for good before their VM is deleted (a node or a
# region removed from the topology): a clean shutdown, one member after the other.
LEAVE_ROLES = ("galera", "arbitrator")


def leave_argv() -> list[str]:
    return ["python3", NODE_AGENT, "leave"]


def leave_command() -> str:
    """What the stack runs over SSH when it deletes a Galera member (components/nodes.py)."""
    return "sudo " + shlex.join(leave_argv())
