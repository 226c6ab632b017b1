"""The VMs of one role in one region: anti-affinity group, fixed-IP ports, volumes, instances."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import pulumi
import pulumi_command as command
import pulumi_openstack as openstack
import pulumi_tls as tls

from keystone_multiregion import push
from keystone_multiregion.render import render_node

from .certificates import signed_certificate
from .keys import SshAccess, key_push
from .push import file_push
from keystone_multiregion.secrets import CA_CERT, KEY_ROLES, PUSH_ROLES, TLS_ROLES, role_has_secrets
from keystone_multiregion.topology import ARBITRATOR, REPLICA, Node, Topology

# Roles whose VMs hold state: never replaced because their cloud-init changed. A replica
# holds a copy of the database on its volume (seeded once, replicating since).
STATEFUL_ROLES = ("galera", ARBITRATOR, REPLICA)


@dataclass
class NodeGroupArgs:
    topology: Topology
    region: str
    role: str
    network_id: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    security_group_id: pulumi.Input[str]
    image_id: pulumi.Input[str]
    secrets: pulumi.Input[Mapping[str, str]]
    ca_key: pulumi.Input[str] = None  # the shared Galera CA's key (TLS roles)
    # Extra addresses the ports may carry (the proxies' VRRP addresses).
    allowed_addresses: list[str] = field(default_factory=list)
    # How the stack reaches the nodes to push their files (and the Keystone nodes' keys).
    ssh: SshAccess | None = None
    # The region component: the key pushes used to be children of its KeyPush component
    # (aliases keep their state).
    region_parent: pulumi.Resource | None = None


def user_data_output(topo: Topology, node_name: str, secrets: pulumi.Input[Mapping[str, str]]) -> pulumi.Output[str]:
    """The node's cloud-init document, gzip-compressed and base64-encoded (Nova's limit is
    65535 bytes: render.encode_user_data), a secret Output when it carries secrets."""
    rendered = pulumi.Output.from_input(secrets).apply(lambda s: render_node(topo, node_name, s))
    user_data = rendered.apply(lambda r: r.encoded_user_data)
    # Whether a role carries secrets is known before any value is.
    return pulumi.Output.secret(user_data) if role_has_secrets(topo.node(node_name).role) else user_data


def node_tls(parent: pulumi.Resource, node: Node, secrets: pulumi.Input[Mapping], ca_key: pulumi.Input[str]):
    """A key and a certificate for the node, signed by the shared CA, with the node's address
    as subjectAltName (the SST donor checks it); returns the node's secrets with them added."""
    ca_cert = pulumi.Output.from_input(secrets).apply(lambda s: s[CA_CERT])
    cert, key = signed_certificate(parent, "tls", node.name, node.name, [node.name], [node.address], ca_key, ca_cert,
                                   ["digital_signature", "key_encipherment", "server_auth", "client_auth"])
    return pulumi.Output.all(secrets, cert, key).apply(
        lambda a: {**a[0], "tls": {node.name: {"cert": a[1], "key": a[2]}}})


def ssh_host_key(parent: pulumi.Resource, node: Node, secrets: pulumi.Input[Mapping]):
    """An SSH host key for a node the stack pushes files to: its cloud-init installs it, the
    push pins its public half (no trust on first use). Returns (secrets with it, public key)."""
    key = tls.PrivateKey(f"ssh-host-{node.name}", algorithm="ED25519", opts=pulumi.ResourceOptions(parent=parent))
    public = key.public_key_openssh.apply(lambda k: k.strip())
    with_key = pulumi.Output.all(secrets, key.private_key_openssh, public).apply(
        lambda a: {**a[0], "ssh_host_keys": {node.name: {"private": a[1], "public": a[2]}}})
    return with_key, public


class NodeGroup(pulumi.ComponentResource):
    addresses: dict[str, str]
    host_keys: dict[str, pulumi.Output[str]]  # pinned SSH host keys of the nodes in PUSH_ROLES
    instance_ids: dict[str, pulumi.Output[str]]
    port_ids: dict[str, pulumi.Output[str]]
    pushes: dict[str, pulumi.Resource]  # each node's file push (after its key push)
    key_digests: dict[str, pulumi.Output[dict]]
    file_digests: dict[str, pulumi.Output[dict]]

    def __init__(self, name: str, args: NodeGroupArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keystone-multiregion:nodes:NodeGroup", name, None, opts)
        topo, role = args.topology, args.role
        child = pulumi.ResourceOptions(parent=self)
        nodes = topo.nodes(args.region, role)

        server_group = openstack.compute.ServerGroup(
            f"servergroup-{role}-{args.region}", name=f"{topo.name}-{args.region}-{role}",
            # Two nodes of a role never share a hypervisor: one host failure costs one node.
            policies="anti-affinity", opts=child)

        self.addresses, self.instance_ids, self.port_ids, self.host_keys = {}, {}, {}, {}
        self.pushes, self.key_digests, self.file_digests = {}, {}, {}
        # One node at a time: node n's VM (when it is created or replaced) and its push wait
        # for node n-1's push, which ends only once node n-1 is healthy again (node-agent).
        previous_push: pulumi.Resource | None = None
        previous_leave: pulumi.Resource | None = None
        for node in nodes:
            port = openstack.networking.Port(
                f"port-{node.name}", name=f"{topo.name}-{node.name}",
                network_id=args.network_id,
                fixed_ips=[openstack.networking.PortFixedIpArgs(subnet_id=args.subnet_id, ip_address=node.address)],
                security_group_ids=[args.security_group_id],
                allowed_address_pairs=[openstack.networking.PortAllowedAddressPairArgs(ip_address=a)
                                       for a in args.allowed_addresses] or None,
                opts=child)

            # A role without secrets renders from none: its user_data stays a plain value.
            node_secrets = (node_tls(self, node, args.secrets, args.ca_key) if role in TLS_ROLES
                            else args.secrets if role_has_secrets(role) else {})
            if role in PUSH_ROLES:
                node_secrets, self.host_keys[node.name] = ssh_host_key(self, node, node_secrets)
            block_devices = None
            image_id = args.image_id
            if node.volume_gb:
                volume = openstack.blockstorage.Volume(
                    f"volume-{node.name}", name=f"{topo.name}-{node.name}-data", size=node.volume_gb,
                    description=f"Galera data of {node.name}",
                    # The database lives here: never deleted by Pulumi, even by `destroy`.
                    opts=pulumi.ResourceOptions(parent=self, protect=True, retain_on_delete=True))
                # Boot from the image and attach the data volume at boot, so cloud-init finds
                # the device on first boot; the volume outlives the instance.
                block_devices = [
                    openstack.compute.InstanceBlockDeviceArgs(
                        source_type="image", destination_type="local", uuid=args.image_id,
                        boot_index=0, delete_on_termination=True),
                    openstack.compute.InstanceBlockDeviceArgs(
                        source_type="volume", destination_type="volume", uuid=volume.id,
                        boot_index=-1, delete_on_termination=False),
                ]
                image_id = None

            waits = [previous_push] if previous_push is not None else []
            if role in STATEFUL_ROLES:
                # A file change never rebuilds a node (node-agent applies pushed files); a
                # database node is not replaced for a newer image either (a replacement costs
                # a full state transfer): an operator asks for it (`pulumi up --replace`).
                instance_opts = pulumi.ResourceOptions(
                    parent=self, depends_on=waits, ignore_changes=["user_data", "image_id", "block_devices"])
            else:
                # Stateless: replaced for a new image or when an operator asks, never because
                # a file changed (pushed instead), one node after the other. The fixed-IP
                # port is reused, so the old VM must release it first.
                instance_opts = pulumi.ResourceOptions(
                    parent=self, depends_on=waits, delete_before_replace=True, ignore_changes=["user_data"])

            instance = openstack.compute.Instance(
                f"instance-{node.name}", name=node.name,
                flavor_name=node.flavor,
                image_id=image_id,
                block_devices=block_devices,
                key_pair=topo.key_pair,
                networks=[openstack.compute.InstanceNetworkArgs(port=port.id)],
                scheduler_hints=[openstack.compute.InstanceSchedulerHintArgs(group=server_group.id)],
                user_data=user_data_output(topo, node.name, node_secrets),
                metadata={"keystone-multiregion-role": role, "keystone-multiregion-region": node.region},
                # Let MariaDB shut down cleanly before the VM is deleted.
                stop_before_destroy=role in STATEFUL_ROLES,
                opts=instance_opts)
            self.addresses[node.name] = node.address
            self.instance_ids[node.name] = instance.id
            self.port_ids[node.name] = port.id
            if args.ssh is not None and role in PUSH_ROLES:
                connection = args.ssh.connection(node.address, self.host_keys[node.name])
                before_files = []
                if role in KEY_ROLES:
                    aliases = []
                    if args.region_parent is not None:
                        aliases = [pulumi.Alias(parent=pulumi.create_urn(
                            f"keys-{args.region}", "keystone-multiregion:keys:KeyPush", parent=args.region_parent))]
                    keys_cmd, self.key_digests[node.name] = key_push(
                        node.name, connection, args.secrets, instance.id,
                        pulumi.ResourceOptions(parent=self, aliases=aliases))
                    before_files.append(keys_cmd)  # the API starts only once the keys are there
                files_cmd, self.file_digests[node.name] = file_push(
                    topo, node.name, connection, node_secrets, instance.id,
                    pulumi.ResourceOptions(parent=self, depends_on=before_files + waits))
                self.pushes[node.name] = previous_push = files_cmd
                if role in push.LEAVE_ROLES:
                    # Runs only when the node leaves the stack (its region or the node removed
                    # from the topology; not when its VM is replaced: the address stays): the
                    # member leaves the cluster cleanly before its VM is deleted, one member
                    # after the other (each waits for the one after it).
                    leave = command.remote.Command(
                        f"leave-{node.name}", connection=connection, delete=push.leave_command(),
                        opts=pulumi.ResourceOptions(parent=self, depends_on=[files_cmd] + (
                            [previous_leave] if previous_leave is not None else [])))
                    previous_leave = leave
        self.server_group_id = server_group.id
        self.register_outputs({"addresses": self.addresses, "server_group_id": server_group.id})
