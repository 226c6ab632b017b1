"""Every node's files to the running node, one node of a role at a time.

cloud-init writes a node's files at first boot only (the instances ignore later changes
to their user_data). Every later change reaches the nodes here: one pulumi-command
`remote.Command` per node runs node-agent's apply (keystone_multiregion/push.py) over
SSH with the node's host key pinned, the payload (every rendered file, secrets included)
on stdin as a secret. The agent installs what changed, takes the least disruptive action,
and answers only once the node is healthy again.

Order: within a role, node n's push (and any replacement of node n's VM) waits for node
n-1's push to have finished, i.e. for node n-1 to be healthy: two proxies, two Keystone
nodes, two Galera nodes of a region are never changed at the same time. A Keystone node's
files wait for its key repositories (the API starts only with them). The agent prints the
digests of what it applied; the stack compares them with what it pushed and `pulumi up`
fails naming a node that differs.
"""

from __future__ import annotations

import json
from typing import Mapping

import pulumi
import pulumi_command as command

from keystone_multiregion import push
from keystone_multiregion.render import render_node
from keystone_multiregion.topology import Topology



def verify_applied(node: str, found: str, expected: Mapping[str, str]) -> dict:
    """The agent's report after the push, or an error naming the node when what it applied
    is not what the stack pushed."""
    try:
        report = json.loads(found.strip().splitlines()[-1])
        digests = report["digests"]
    except (ValueError, IndexError, KeyError, TypeError):
        raise ValueError(f"{node}: node-agent apply printed {found[-200:]!r}, not its report") from None
    if digests != dict(expected):
        differ = sorted(p for p in set(digests) | set(expected) if digests.get(p) != expected.get(p))
        raise ValueError(f"{node}: after the push its files differ from what the stack pushed: {', '.join(differ)}; "
                         "check the node (node-agent check) and run `pulumi up` again")
    return digests


def file_push(topo: Topology, node_name: str, connection: command.remote.ConnectionArgs,
              node_secrets: pulumi.Input[Mapping], instance_id: pulumi.Input[str], opts: pulumi.ResourceOptions):
    """The push of one node's files. Returns the command and the digests the node reported,
    verified against what was pushed (a secret: some files are)."""
    data = pulumi.Output.from_input(node_secrets).apply(lambda s: push.payload(topo, render_node(topo, node_name, s)))
    expected = data.apply(push.digests)
    cmd = command.remote.Command(
        f"files-{node_name}", connection=connection,
        create=push.apply_command(), update=push.apply_command(),
        stdin=pulumi.Output.secret(data.apply(push.encode)),
        # A new VM (replaced for any reason) gets its files again.
        triggers=[instance_id], opts=opts)
    digests = pulumi.Output.secret(pulumi.Output.all(cmd.stdout, expected).apply(
        lambda a: verify_applied(node_name, a[0], a[1])))
    return cmd, digests
