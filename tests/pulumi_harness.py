"""Run the real Pulumi program in-process under pulumi.runtime.set_mocks and record
every resource registration, with the resource options the engine would receive."""

from __future__ import annotations

import asyncio
import json
import os
import runpy
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import SETTINGS
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from keystone_multiregion import keys, push

PROJECT_DIR = Path(__file__).resolve().parent.parent
PROJECT = "keystone-multiregion"
ORGANIZATION = "acme"

# What the mocked shared stack exports: real-looking, distinct values per secret.
MOCK_SECRETS = {
    "galera_root_password": "mock-root-pw-1",
    "galera_sst_password": "mock-sst-pw-2",
    "keystone_db_password": "mock-ksdb-pw-3",
    "keystone_admin_password": "mock-admin-pw-4",
    "galera_replication_password": "mock-repl-pw-7",
    "galera_ca_cert": "mock-ca-cert\n",
    "vrrp_password": "mockvrrp",
    "fernet_keys": {"0": "mock-fernet-0", "1": "mock-fernet-1"},
    "credential_keys": {"0": "mock-credential-0", "1": "mock-credential-1"},
    "public_ca_cert": "mock-public-dev-ca\n",
    # The backups (topology `backup:`, auth_version '3' in the example): the generated key
    # and the operator's object store credentials (the shared stack's `backupStore` config).
    "backup_key": "mock-backup-key-5-0123456789abcdef0123456789abcdef",
    "backup_store": {"application_credential_id": "mock-appcred-id-6",
                     "application_credential_secret": "mock-appcred-secret-7"},
}
# What the operator set with `pulumi config set --secret --path 'backupStore.<field>' ...`
# on the shared stack (passed to the shared stack's run unless the test says otherwise).
MOCK_BACKUP_STORE = dict(MOCK_SECRETS["backup_store"])
MOCK_CA_KEY = "mock-ca-key\n"
MOCK_PUBLIC_DEV_CA_KEY = "mock-public-dev-ca-key\n"


def mock_node_secrets(node_name: str, region: str) -> dict:
    """What a node's user_data is rendered from under these mocks (its own TLS credentials,
    and the region's self-signed development certificate for the public endpoint)."""
    return {**MOCK_SECRETS,
            "tls": {node_name: {"cert": f"mock-cert-tls-cert-{node_name}\n",
                                "key": f"mock-private-key-tls-key-{node_name}\n"}},
            "public_tls": {region: {"cert": f"mock-cert-public-cert-{region}\n",
                                    "key": f"mock-private-key-public-key-{region}\n"}},
            "ssh_host_keys": {node_name: {"private": f"mock-openssh-private-key-ssh-host-{node_name}\n",
                                          "public": f"ssh-ed25519 mock-ssh-host-{node_name}"}}}


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict
    parent: str
    protect: bool
    retain_on_delete: bool
    ignore_changes: list[str]
    delete_before_replace: bool
    secret_inputs: set[str] = field(default_factory=set)
    provider: str = ""
    read: bool = False
    dependencies: list[str] = field(default_factory=list)


class _Mocks(pulumi.runtime.Mocks):
    def __init__(self, shared_outputs: dict, drifted: tuple[str, ...] = ()):
        self.shared_outputs = shared_outputs
        self.drifted = drifted
        self.calls: list[tuple[str, dict]] = []
        self._fip = 0

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        state = dict(args.inputs)
        if args.typ == "pulumi:pulumi:StackReference":
            return f"{args.name}-id", {"name": args.name, "outputs": self.shared_outputs}
        if args.typ == "openstack:networking/floatingIp:FloatingIp":
            self._fip += 1
            state["address"] = f"203.0.113.{self._fip}"
        if args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = f"random-{args.name}"
        if args.typ == "random:index/randomBytes:RandomBytes":
            state["base64"] = f"bW9jay1{args.name}+/="  # has the characters URL-safe base64 replaces
        if args.typ == "tls:index/privateKey:PrivateKey":
            state["privateKeyPem"] = f"mock-private-key-{args.name}\n"
            state["privateKeyOpenssh"] = f"mock-openssh-private-key-{args.name}\n"
            state["publicKeyOpenssh"] = f"ssh-ed25519 mock-{args.name}\n"
        if args.typ == "command:remote:Command" and args.name.startswith("files-"):
            # The node as node-agent apply leaves it: its report with the digests of what it
            # holds (a node in `drifted` reports a file of its own).
            data = json.loads(_unwrap_secrets(state["stdin"]))
            digests = push.digests(data)
            if args.name in self.drifted:
                digests[sorted(digests)[0]] = "drifted"
            state["stdout"] = json.dumps({"node": data["node"], "changed": [], "actions": [], "digests": digests})
        elif args.typ == "command:remote:Command" and args.name.startswith("keys-"):
            # The node as keystone-node install-keys leaves it: holding what was pushed, and
            # printing its digests (a node in `drifted` reports other keys).
            repos = json.loads(_unwrap_secrets(state["stdin"]))
            if args.name in self.drifted:
                repos["fernet_keys"]["0"] = "drifted"
            state["stdout"] = json.dumps(keys.digests(repos), sort_keys=True)
        if args.typ == "tls:index/certRequest:CertRequest":
            state["certRequestPem"] = f"mock-csr-{args.name}\n"
        if args.typ in ("tls:index/locallySignedCert:LocallySignedCert", "tls:index/selfSignedCert:SelfSignedCert"):
            state["certPem"] = f"mock-cert-{args.name}\n"
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append((args.token, dict(args.args)))
        if args.token == "openstack:images/getImage:getImage":
            return {"id": f"image-id-{args.args.get('name')}", "name": args.args.get("name")}
        if args.token == "openstack:identity/getService:getService":
            return {"id": "identity-service-id", "name": args.args.get("name"), "type": args.args.get("type")}
        if args.token == "openstack:dns/getDnsZone:getDnsZone":
            return {"id": f"zone-id-{args.args.get('name')}", "name": args.args.get("name")}
        if args.token == "openstack:networking/getNetwork:getNetwork":
            return {"id": f"extnet-id-{args.args.get('name')}", "name": args.args.get("name")}
        return {}


def _unwrap_secrets(value):
    """Inputs as the provider would see them: secret markers removed (recorded separately)."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return _unwrap_secrets(value["value"])
        return {k: _unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap_secrets(v) for v in value]
    return value


class _RecordingMonitor(MockMonitor):
    def __init__(self, mocks):
        super().__init__(mocks)
        self.registered: list[Registered] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        secret_inputs = set()
        for key, value in request.object.fields.items():
            sv = value.struct_value if value.HasField("struct_value") else None
            if sv is not None and sv.fields.get(rpc._special_sig_key) is not None and \
                    sv.fields[rpc._special_sig_key].string_value == rpc._special_secret_sig:
                secret_inputs.add(key)
        self.registered.append(Registered(
            type=request.type, name=request.name, inputs=_unwrap_secrets(rpc.deserialize_properties(request.object)),
            parent=request.parent, protect=request.protect, retain_on_delete=request.retainOnDelete,
            ignore_changes=list(request.ignoreChanges), delete_before_replace=request.deleteBeforeReplace,
            secret_inputs=secret_inputs, provider=request.provider, dependencies=list(request.dependencies)))
        return response

    def ReadResource(self, request):
        # Reads (a StackReference is one) change nothing; record them as such.
        response = super().ReadResource(request)
        self.registered.append(Registered(
            type=request.type, name=request.name, inputs=rpc.deserialize_properties(request.properties),
            parent=request.parent, protect=False, retain_on_delete=False, ignore_changes=[],
            delete_before_replace=False, provider=request.provider, read=True))
        return response


@dataclass
class ProgramRun:
    resources: list[Registered]
    calls: list[tuple[str, dict]]
    exports: dict = field(default_factory=dict)  # the stack's outputs by name (Outputs or values)

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.type == typ]

    def named(self, name: str) -> Registered:
        matches = [r for r in self.resources if r.name == name]
        assert len(matches) == 1, f"{len(matches)} resources named {name!r}"
        return matches[0]


def _quiet_unretrieved(loop, context):
    if "never retrieved" not in context.get("message", ""):
        loop.default_exception_handler(context)


MOCK_SSH_KEY = "mock-ssh-private-key\n"


_last_monitor: _RecordingMonitor | None = None


def last_registered() -> list[Registered]:
    """What the last run_program registered, also when the program failed (so a check that
    must stop it before any resource exists can be seen to)."""
    return list(_last_monitor.registered) if _last_monitor else []


def run_program(stack: str, config: dict[str, str], shared_outputs: dict | None = None,
                ssh_key: str | None = MOCK_SSH_KEY, drifted: tuple[str, ...] = (),
                dev_certificate: bool = True, backup_store: dict | None = MOCK_BACKUP_STORE,
                secret_config: tuple[str, ...] = ("sshPrivateKey", "backupStore")) -> ProgramRun:
    """Run __main__.py as the Pulumi engine would for `stack`, against mocks. The operator has
    set the secret sshPrivateKey (`ssh_key`, None: not set) and, as the example stacks do,
    allowDevelopmentCertificate (`dev_certificate`, False: not set); the key push to the nodes
    in `drifted` (resource names) reads back other keys. The shared stack gets the secret
    `backupStore` (`backup_store`, None: not set); config keys in `secret_config` are secrets,
    and structured values (dicts, lists) are passed as JSON, as the CLI passes them."""
    mocks = _Mocks({"secrets": dict(MOCK_SECRETS), "galera_ca_key": MOCK_CA_KEY,
                    "public_dev_ca_key": MOCK_PUBLIC_DEV_CA_KEY}
                   if shared_outputs is None else shared_outputs, drifted)
    if ssh_key is not None and "sshPrivateKey" not in config:
        config = {**config, "sshPrivateKey": ssh_key}
    if backup_store is not None and config.get("shared") and "backupStore" not in config:
        config = {**config, "backupStore": backup_store}
    if dev_certificate and "allowDevelopmentCertificate" not in config:
        config = {**config, "allowDevelopmentCertificate": True}
    global _last_monitor
    monitor = _last_monitor = _RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor,
                             organization=ORGANIZATION)
    pulumi.runtime.set_all_config(
        {f"{PROJECT}:{k}": json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in config.items()},
        secret_keys=[f"{PROJECT}:{k}" for k in secret_config])
    SETTINGS.rpc_manager.clear()
    SETTINGS.outputs.clear()
    # A program that fails (bad config, a missing secret) leaves the futures of resources it
    # had declared unresolved; run_program raises the error itself, so their echo at
    # garbage collection ("exception was never retrieved") is noise.
    asyncio.get_event_loop().set_exception_handler(_quiet_unretrieved)
    cwd = os.getcwd()
    os.chdir(PROJECT_DIR)
    exports: dict = {}
    real_export = pulumi.export

    def export(name, value):
        exports[name] = value
        real_export(name, value)

    pulumi.export = export
    try:
        _sync_await(run_pulumi_func(lambda: runpy.run_path(str(PROJECT_DIR / "__main__.py"), run_name="__main__")))
    finally:
        pulumi.export = real_export
        os.chdir(cwd)
    return ProgramRun(resources=monitor.registered, calls=mocks.calls, exports=exports)
