"""keystone-multiregion: one Pulumi program, one stack per region plus a shared stack.

A region stack's config names its region (`keystone-multiregion:region`); the shared
stack says `keystone-multiregion:shared: true`. Everything else comes from topology.yaml.
"""

import pulumi

from components.keys import SshAccess
from components.region import RegionArgs, RegionDeployment
from components.shared import BACKUP_STORE_CONFIG, SharedSecrets, backup_store_config
from keystone_multiregion.migration import IMPORTED_KEYS_CONFIG, check_imported_config
from keystone_multiregion.topology import TopologyError, load_topology_file

config = pulumi.Config()

try:
    # Validate the whole topology before a single resource is declared.
    topology = load_topology_file(config.get("topology") or "topology.yaml")
    region_name = config.get("region")
    if region_name:
        region = topology.region(region_name)
except TopologyError as exc:
    raise pulumi.RunError(str(exc)) from None


def ssh_access() -> SshAccess:
    """How this stack reaches its nodes to push their files (and the Keystone nodes' key
    repositories). Checked before any resource exists."""
    if not topology.key_pair:
        raise pulumi.RunError(
            "topology: defaults.key_pair is not set; this region's nodes receive their files over SSH, "
            "so they need a login key: name a Nova key pair (defaults.key_pair: ops) whose private key you "
            "give this stack as sshPrivateKey")
    key = config.get_secret("sshPrivateKey")
    if key is None:
        raise pulumi.RunError(
            "config: keystone-multiregion:sshPrivateKey is not set; this region's nodes receive their files "
            "(and the Keystone nodes the Fernet and credential keys) over SSH from where Pulumi runs: run "
            "`pulumi config set --secret "
            f"sshPrivateKey < <file>` with the private key of the key pair {topology.key_pair!r} (topology.yaml), "
            "and `pulumi config set sshBastion <host>` unless Pulumi runs inside the admin network")
    return SshAccess(user=config.get("sshUser") or "debian", private_key=key,
                     bastion_host=config.get("sshBastion"), bastion_user=config.get("sshBastionUser"),
                     bastion_port=config.get_int("sshBastionPort") or 22,
                     bastion_host_key=config.get("sshBastionHostKey"))


def public_certificate() -> tuple[pulumi.Input[str] | None, pulumi.Input[str] | None, bool]:
    """The public endpoint's certificate chain and key from the stack config, and whether the
    stack takes a certificate from the shared development CA instead (only when its config says
    allowDevelopmentCertificate: true). Checked before any resource exists."""
    if not topology.vips(region.name):  # a witness site serves no endpoint
        return None, None, False
    cert, key = config.get("publicCertificate"), config.get_secret("publicKey")
    if cert is not None and key is not None:
        return cert, key, False
    if cert is not None or key is not None:
        given, missing = ("publicCertificate", "publicKey") if cert is not None else ("publicKey", "publicCertificate")
        raise pulumi.RunError(
            f"config: keystone-multiregion:{missing} is not set but {given} is; the public endpoint "
            f"{region.public_hostname} needs both: run `pulumi config set publicCertificate < chain.pem` and "
            "`pulumi config set --secret publicKey < key.pem`")
    if not config.get_bool("allowDevelopmentCertificate"):
        raise pulumi.RunError(
            "config: keystone-multiregion:publicCertificate is not set; the public endpoint "
            f"{region.public_hostname} needs a certificate: run `pulumi config set publicCertificate < chain.pem` "
            "and `pulumi config set --secret publicKey < key.pem`, or, for a development stack only, "
            "`pulumi config set allowDevelopmentCertificate true` (a certificate from the shared stack's "
            "development CA, whose key every such region then holds)")
    return None, None, True


if config.get_bool("shared"):
    if region_name:
        raise pulumi.RunError("config: keystone-multiregion:shared and keystone-multiregion:region are both set; "
                              "a stack is either the shared stack or one region's stack, so remove one")
    # `pulumi config set fernetRotations N+1` rotates the Fernet keys; roll the change out to
    # every region before the next rotation (README: key rotation).
    # `credentialRotations` likewise rotates the credential keys (then credential-migrate).
    # With backup: in the topology, the object store's credentials (`backupStore`, a secret),
    # checked before any resource exists.
    try:
        try:
            store_config = config.get_object(BACKUP_STORE_CONFIG)
        except pulumi.ConfigTypeError:
            store_config = "not JSON"  # never echo the value: it is a secret
        backup_store = backup_store_config(topology, store_config,
                                           pulumi.runtime.is_config_secret(config.full_key(BACKUP_STORE_CONFIG)))
        # Moving an existing Keystone in: its key repositories (import-keys wrote the value),
        # served instead of generated ones and rotated on from them.
        try:
            imported_config = config.get_object(IMPORTED_KEYS_CONFIG)
        except pulumi.ConfigTypeError:
            imported_config = "not JSON"  # never echo the value: it holds keys
        imported_keys = check_imported_config(
            imported_config, pulumi.runtime.is_config_secret(config.full_key(IMPORTED_KEYS_CONFIG)),
            config.get_int("fernetRotations") or 0, config.get_int("credentialRotations") or 0)
    except ValueError as exc:
        raise pulumi.RunError(str(exc)) from None
    shared = SharedSecrets("shared", topology.name, fernet_rotations=config.get_int("fernetRotations") or 0,
                           max_active_keys=topology.keystone.max_active_keys,
                           credential_rotations=config.get_int("credentialRotations") or 0,
                           backup_store=backup_store, imported_keys=imported_keys)
    pulumi.export("secrets", shared.secrets)
    pulumi.export("galera_ca_key", shared.ca_key)
    # The development CA's key leaves the shared stack only for development deployments: a
    # region stack's StackReference keeps every output in the region's state.
    if config.get_bool("allowDevelopmentCertificate"):
        pulumi.export("public_dev_ca_key", shared.public_dev_ca_key)
elif region_name:
    # Secrets come from the shared stack, never from this stack's file.
    # Default: the stack named "shared" of this project, in this organization (a self-managed
    # backend calls its only organization "organization").
    org = pulumi.get_organization() or "organization"
    shared_stack = config.get("sharedStack") or f"{org}/{pulumi.get_project()}/shared"
    ssh = ssh_access()
    public_cert, public_key, development_certificate = public_certificate()
    shared = pulumi.StackReference(shared_stack)
    public_dev_ca_key = None
    if development_certificate:
        def dev_ca_key(key):
            if not key:
                raise pulumi.RunError(
                    f"{shared_stack} exports no public_dev_ca_key, which allowDevelopmentCertificate needs: run "
                    "`pulumi config set allowDevelopmentCertificate true -s shared` and `pulumi up -s shared`")
            return key
        public_dev_ca_key = shared.get_output("public_dev_ca_key").apply(dev_ca_key)
    deployment = RegionDeployment(region.name, RegionArgs(
        topology=topology, region=region.name, secrets=shared.get_output("secrets"),
        ca_key=shared.get_output("galera_ca_key"), cloud=config.get("cloud"),
        public_cert=public_cert, public_key=public_key,
        public_ca_cert=config.get("publicCaCertificate"), public_dev_ca_key=public_dev_ca_key,
        register_catalog=config.get_bool("registerCatalog", True), ssh=ssh))
    pulumi.export("region", region.name)
    pulumi.export("public_hostname", region.public_hostname)
    pulumi.export("addresses", deployment.addresses)
    pulumi.export("vips", {v.name: v.address for v in topology.vips(region.name)})
    # Publish these as A records of public_hostname (DNS round-robin over the VIPs).
    pulumi.export("public_ips", deployment.public_ips)
    # What each Keystone node reported holding after the last key push (equal everywhere).
    pulumi.export("key_digests", deployment.key_digests)
    pulumi.export("file_digests", deployment.file_digests)  # secret: some pushed files are
    if deployment.backup_container is not None:
        pulumi.export("backup_container", deployment.backup_container)  # this region's Swift container
else:
    raise pulumi.RunError("config: keystone-multiregion:region is not set; run "
                          "`pulumi config set region <name>` with a region from topology.yaml, "
                          "or `pulumi config set shared true` for the shared stack")
