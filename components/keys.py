"""Key repositories to running Keystone nodes: pushed over SSH (pulumi-command), never baked
into cloud-init, so a Fernet rotation changes files on the nodes and rebuilds none.

Each Keystone node gets one `command.remote.Command` (created with the node, components/nodes.py)
that runs `keystone-node install-keys`
(roles/keystone.py: install_keys_command) with the repositories (keys.payload) on stdin.
It runs when the node is created or replaced (the instance id is a trigger) and whenever
the repositories change (a rotation). The node installs them file by file, refuses a
repository whose primary key it never held as staged, and prints its digests; the stack
compares them with what it pushed, and `pulumi up` fails naming any node that differs.
The connection pins the node's SSH host key (made here, installed by its cloud-init).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

import pulumi
import pulumi_command as command

from keystone_multiregion import keys
from keystone_multiregion.roles.keystone import install_keys_command
from keystone_multiregion.secrets import IMPORTED_KEY_DIGESTS, require_key_repositories


@dataclass(frozen=True)
class SshAccess:
    """How the stack reaches the nodes' SSH (only from the admin network, security.py): directly
    when Pulumi runs there, else through a bastion in it. The private key is the one of the
    topology's key_pair."""
    user: str
    private_key: pulumi.Input[str]
    bastion_host: str | None = None
    bastion_user: str | None = None
    bastion_port: int = 22
    bastion_host_key: str | None = None  # "ssh-ed25519 AAAA...": pinned when given

    def connection(self, host: str, host_key: pulumi.Input[str]) -> command.remote.ConnectionArgs:
        proxy = None
        if self.bastion_host:
            proxy = command.remote.ProxyConnectionArgs(
                host=self.bastion_host, port=self.bastion_port, user=self.bastion_user or self.user,
                private_key=self.private_key, host_key=self.bastion_host_key)
        # A new VM takes minutes to boot: keep dialling (10 s apart) for up to 10 minutes.
        return command.remote.ConnectionArgs(host=host, user=self.user, private_key=self.private_key,
                                             host_key=host_key, proxy=proxy, dial_error_limit=60,
                                             per_dial_timeout=10)


def verify_digests(node: str, found: str, expected: Mapping[str, str]) -> dict:
    """The digests a node printed after the push, or an error naming the node if they are not
    what the stack pushed (a node whose repository differs fails `pulumi up`)."""
    try:
        digests = json.loads(found)
    except ValueError:
        raise ValueError(f"{node}: keystone-node install-keys printed {found[:200]!r}, not its key digests") from None
    if digests != dict(expected):
        raise ValueError(f"{node}: after the push its key repositories are {digests}, but the stack pushed "
                         f"{dict(expected)}; check the node (keystone-node key-check) and run `pulumi up` again")
    return digests


def key_push(node_name: str, connection: command.remote.ConnectionArgs, secrets: pulumi.Input[Mapping],
             instance_id: pulumi.Input[str], opts: pulumi.ResourceOptions):
    """The key push to one Keystone node: `keystone-node install-keys` with the repositories
    on stdin. It runs when the node is created or replaced (the instance id is a trigger) and
    whenever the repositories change (a rotation). Returns the command and its verified
    digests."""
    repos = pulumi.Output.from_input(secrets).apply(
        lambda s: require_key_repositories(s, source="the shared stack's secrets"))
    stdin = pulumi.Output.secret(repos.apply(keys.payload))
    expected = repos.apply(keys.digests)  # digests of keys: not secret
    # With imported keys (the shared stack's importedKeys), the nodes may take those wholesale.
    line = pulumi.Output.unsecret(pulumi.Output.from_input(secrets).apply(
        lambda s: install_keys_command((s or {}).get(IMPORTED_KEY_DIGESTS))))  # digests: not secret
    cmd = command.remote.Command(
        f"keys-{node_name}", connection=connection,
        create=line, update=line, stdin=stdin,
        triggers=[instance_id], opts=opts)
    digests = pulumi.Output.all(cmd.stdout, expected).apply(lambda a: verify_digests(node_name, a[0], a[1]))
    return cmd, digests
