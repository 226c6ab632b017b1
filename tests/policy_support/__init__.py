"""Drive the policy pack the way the Pulumi engine does.

The engine starts a Python policy pack through the analyzer shim
(`python -u -m pulumi.policy <engine address> <pack dir>`), reads the port the pack prints
on stdout, and speaks the `pulumirpc.Analyzer` gRPC protocol to it: GetAnalyzerInfo,
Configure (every policy's enforcement level, with config defaults from the policy's schema
and the user's overrides on top), Analyze per resource (its inputs) and AnalyzeStack once
(every resource's outputs, parents and property dependencies). `PackProcess` and `Analyzer`
do exactly that; `stack_requests` turns a program run under mocks (tests/pulumi_harness.py)
into those requests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc, plugin_pb2

ROOT = Path(__file__).resolve().parent.parent.parent
PACK_DIR = ROOT / "policy"
PROJECT = "keystone-multiregion"

# What the engine puts in a property it cannot know yet, and around a secret.
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"
SIG = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"

RPC_TIMEOUT = 20  # seconds for any one call; the pack answers in milliseconds
START_TIMEOUT = 30  # seconds for the pack to print its port


class PackProcess:
    """The pack as a separate process, started as the CLI's Python analyzer shim starts it."""

    def __init__(self, pack_dir: Path = PACK_DIR):
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:0", str(pack_dir)],
            cwd=pack_dir, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err, env=env)
        self.port = self._wait_for_port()

    def _read(self, f) -> str:
        f.seek(0)
        return f.read().decode(errors="replace")

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            out = self._read(self._out)
            if "\n" in out:
                first = out.split("\n", 1)[0].strip()
                if first.isdigit():
                    return int(first)
                self.stop()
                raise RuntimeError(f"the policy pack printed {first!r} instead of its port; "
                                   f"stderr:\n{self._read(self._err)}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"the policy pack exited with {self.proc.returncode} before printing its "
                                   f"port; stderr:\n{self._read(self._err)}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the policy pack printed no port within {START_TIMEOUT}s; "
                           f"stderr:\n{self._read(self._err)}")

    @property
    def stderr(self) -> str:
        return self._read(self._err)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._out.close()
        self._err.close()


@dataclass
class Diagnostic:
    policy: str
    level: str  # "mandatory" or "advisory"
    message: str
    urn: str

    def __str__(self) -> str:
        return f"[{self.level}] {self.policy} {self.urn}: {self.message}"


def _diagnostics(response) -> list[Diagnostic]:
    return [Diagnostic(d.policyName, analyzer_pb2.EnforcementLevel.Name(d.enforcementLevel).lower(),
                       d.message, d.urn) for d in response.diagnostics]


def to_struct(props: dict, secret_keys: Iterable[str] = ()) -> struct_pb2.Struct:
    """Properties as the engine marshals them: secrets wrapped in the secret signature."""
    secret_keys = set(secret_keys)
    value = {k: ({SIG: SECRET_SIG, "value": v} if k in secret_keys else v) for k, v in props.items()}
    s = struct_pb2.Struct()
    s.update(value)
    return s


@dataclass
class Resource:
    """One resource as the engine describes it to an analyzer."""
    type: str
    name: str
    urn: str
    inputs: dict
    outputs: dict
    parent: str = ""
    protect: bool = False
    ignore_changes: list[str] = field(default_factory=list)
    delete_before_replace: bool = False
    secret_keys: set[str] = field(default_factory=set)
    dependencies: list[str] = field(default_factory=list)
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    provider: "Resource | None" = None

    def options(self) -> analyzer_pb2.AnalyzerResourceOptions:
        return analyzer_pb2.AnalyzerResourceOptions(
            protect=self.protect, ignoreChanges=self.ignore_changes,
            deleteBeforeReplace=self.delete_before_replace,
            deleteBeforeReplaceDefined=self.delete_before_replace, parent=self.parent)

    def provider_message(self):
        p = self.provider
        return analyzer_pb2.AnalyzerProviderResource(
            type=p.type, properties=to_struct(p.inputs), urn=p.urn, name=p.name) if p else None

    def analyze_request(self) -> analyzer_pb2.AnalyzeRequest:
        request = analyzer_pb2.AnalyzeRequest(
            type=self.type, properties=to_struct(self.inputs, self.secret_keys), urn=self.urn, name=self.name,
            options=self.options())
        if self.provider:
            request.provider.CopyFrom(self.provider_message())
        return request

    def stack_resource(self) -> analyzer_pb2.AnalyzerResource:
        resource = analyzer_pb2.AnalyzerResource(
            type=self.type, properties=to_struct(self.outputs, self.secret_keys), urn=self.urn, name=self.name,
            options=self.options(), parent=self.parent, dependencies=self.dependencies,
            propertyDependencies={k: analyzer_pb2.AnalyzerPropertyDependencies(urns=v)
                                  for k, v in self.property_dependencies.items()})
        if self.provider:
            resource.provider.CopyFrom(self.provider_message())
        return resource


def urn(stack: str, qualified_type: str, name: str) -> str:
    return f"urn:pulumi:{stack}::{PROJECT}::{qualified_type}::{name}"


class Analyzer:
    """A gRPC client of the pack, calling it as the engine does."""

    def __init__(self, port: int):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(self.channel).result(timeout=RPC_TIMEOUT)
        self.stub = analyzer_pb2_grpc.AnalyzerStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def info(self) -> analyzer_pb2.AnalyzerInfo:
        return self.stub.GetAnalyzerInfo(empty_pb2.Empty(), timeout=RPC_TIMEOUT)

    def plugin_info(self) -> plugin_pb2.PluginInfo:
        return self.stub.GetPluginInfo(empty_pb2.Empty(), timeout=RPC_TIMEOUT)

    def configure(self, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, dict]:
        """The engine's reconciliation: each policy's default enforcement level and the
        `default` of every property of its config schema, then the overrides on top."""
        overrides = overrides or {}
        request = analyzer_pb2.ConfigureAnalyzerRequest()
        sent = {}
        for policy in self.info().policies:
            schema = json_format.MessageToDict(policy.configSchema.properties)
            props = {k: v["default"] for k, v in schema.items() if "default" in v}
            props.update(overrides.get(policy.name, {}))
            config = analyzer_pb2.PolicyConfig(enforcementLevel=policy.enforcementLevel)
            config.properties.update(props)
            request.policyConfig[policy.name].CopyFrom(config)
            sent[policy.name] = props
        self.stub.Configure(request, timeout=RPC_TIMEOUT)
        return sent

    def analyze(self, resource: Resource) -> list[Diagnostic]:
        return _diagnostics(self.stub.Analyze(resource.analyze_request(), timeout=RPC_TIMEOUT))

    def analyze_stack(self, resources: Iterable[Resource]) -> list[Diagnostic]:
        request = analyzer_pb2.AnalyzeStackRequest(resources=[r.stack_resource() for r in resources])
        return _diagnostics(self.stub.AnalyzeStack(request, timeout=RPC_TIMEOUT))

    def analyze_all(self, resources: list[Resource]) -> list[Diagnostic]:
        """A whole preview: Analyze on every resource, then AnalyzeStack."""
        out = []
        for r in resources:
            out += self.analyze(r)
        return out + self.analyze_stack(resources)


# --- a program run under mocks, as the engine would describe it -------------------------------

_NOT_CUSTOM = re.compile(r"^(keystone-multiregion:|pulumi:pulumi:Stack$)")


def _strings(value) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _replace(value, mapping: dict[str, str]):
    if isinstance(value, str):
        return mapping.get(value, value)
    if isinstance(value, dict):
        return {k: _replace(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, mapping) for v in value]
    return value


def stack_requests(stack: str, registered: list, preview: bool = False) -> list[Resource]:
    """The resources of one program run (pulumi_harness.Registered) as the engine describes
    them to an analyzer.

    URNs are built the engine's way (a child's type chain is its parent's plus its own; the
    root stack is left out). The harness's mocks give every resource the id `<name>-id`, so
    a property whose value is another resource's id depends on that resource: that is how
    `propertyDependencies` are rebuilt here (the SDK sends them from the Outputs a property
    was built from, which in this program are exactly those ids). `dependencies` are those
    plus what the SDK registered (explicit `depends_on` included), as the engine keeps them
    in the resource's state.
    Outputs are the inputs plus the id, as after `pulumi up`. With `preview=True`, the
    stack is new: every id is unknown, in the outputs and wherever an input uses one.
    """
    by_key = {(r.type, r.name): r for r in registered}

    def key_of_urn(u: str):
        if not u:
            return None
        qualified, name = u.split("::")[2], u.split("::")[3]
        return (qualified.split("$")[-1], name)

    qualified: dict[tuple, str] = {}

    def qualified_type(r) -> str:
        k = (r.type, r.name)
        if k not in qualified:
            parent = by_key.get(key_of_urn(r.parent))
            if parent is None or parent.type == "pulumi:pulumi:Stack":
                qualified[k] = r.type
            else:
                qualified[k] = qualified_type(parent) + "$" + r.type
        return qualified[k]

    urns = {(r.type, r.name): urn(stack, qualified_type(r), r.name) for r in registered}
    custom = [r for r in registered if not _NOT_CUSTOM.match(r.type)]
    custom_keys = {(r.type, r.name) for r in custom}
    ids: dict[str, list[str]] = {}
    for r in custom:
        ids.setdefault(f"{r.name}-id", []).append(urns[(r.type, r.name)])
    unknown_ids = {i: UNKNOWN for i in ids} if preview else {}

    out: dict[tuple, Resource] = {}
    for r in registered:
        k = (r.type, r.name)
        prop_deps = {}
        for prop, value in r.inputs.items():
            deps = sorted({u for s in _strings(value) for u in ids.get(s, []) if u != urns[k]})
            if deps:
                prop_deps[prop] = deps
        inputs = _replace(r.inputs, unknown_ids)
        outputs = dict(inputs)
        if k in custom_keys:
            outputs["id"] = UNKNOWN if preview else f"{r.name}-id"
        parent = by_key.get(key_of_urn(r.parent))
        out[k] = Resource(
            type=r.type, name=r.name, urn=urns[k], inputs=inputs, outputs=outputs,
            parent=urns[(parent.type, parent.name)] if parent is not None else "",
            protect=r.protect, ignore_changes=list(r.ignore_changes),
            delete_before_replace=r.delete_before_replace, secret_keys=set(r.secret_inputs),
            dependencies=sorted({u for v in prop_deps.values() for u in v}
                                | {urns[d] for d in map(key_of_urn, r.dependencies) if d in urns}),
            property_dependencies=prop_deps)
    for r in registered:
        if r.provider:
            provider = by_key.get(key_of_urn(r.provider.rsplit("::", 1)[0]))
            if provider is not None:
                out[(r.type, r.name)].provider = out[(provider.type, provider.name)]
    return list(out.values())
