"""The policy pack, driven through its real analyzer interface.

The pack runs as its own process, started the way the Pulumi CLI starts a Python pack
(`python -u -m pulumi.policy <engine> policy`); the tests talk gRPC to it as the engine
does (tests/policy_support). Every policy has a failing and a passing case, and every
example stack's real resources (the program under mocks) pass with no mandatory violation,
both as after `pulumi up` and as the preview of a new stack, where ids are unknown.
"""

import copy
import dataclasses
import sys

import pytest
import yaml

from helpers import ROOT
from keystone_multiregion.roles.proxy import MONITOR_PORT
from keystone_multiregion.security import PORTS, VRRP_PROTOCOL
from keystone_multiregion.stacks import stack_config, stack_files
from keystone_multiregion.topology import load_topology_file
from policy_support import UNKNOWN, Analyzer, PackProcess, Resource, stack_requests, urn
from pulumi_harness import run_program

sys.path.insert(0, str(ROOT / "policy"))
import policies  # noqa: E402  (the pack's module: importing it starts no server)

TOPO = load_topology_file(ROOT / "topology.yaml")
STACKS = sorted(stack_files(ROOT))

RULE = policies.SECGROUP_RULE
MANDATORY = ["no-service-port-open-to-world", "ssh-only-from-admin-cidr", "catalog-endpoint-unversioned-https",
             "control-plane-anti-affinity", "galera-volume-protected", "galera-security-group-not-public",
             "one-node-at-a-time", "remote-command-pins-host-key", "backup-container-protected"]
ADVISORY = ["world-open-only-https", "user-data-size", "bastion-pins-host-key", "backup-store-https"]
STACK_POLICIES = {"control-plane-anti-affinity", "galera-volume-protected", "galera-security-group-not-public",
                  "one-node-at-a-time", "backup-container-protected"}


@pytest.fixture(scope="module")
def pack():
    process = PackProcess()
    analyzer = None
    try:
        analyzer = Analyzer(process.port)
        analyzer.configure()
        yield analyzer
    finally:
        if analyzer is not None:
            analyzer.close()
        process.stop()


@pytest.fixture(scope="module")
def runs():
    return {stack: run_program(stack, stack_config(ROOT, stack)) for stack in STACKS}


# --- building resources as the engine describes them ------------------------------------------

def res(typ, name, inputs, *, id=None, protect=False, deps=None, secret=()):
    """A custom resource of a synthetic stack `t`; outputs are the inputs plus the id."""
    outputs = dict(inputs, id=id if id is not None else f"{name}-id")
    return Resource(type=typ, name=name, urn=urn("t", typ, name), inputs=dict(inputs), outputs=outputs,
                    protect=protect, secret_keys=set(secret), property_dependencies=deps or {},
                    dependencies=sorted({u for v in (deps or {}).values() for u in v}))


def rule(name="sg-galera-t-rule", **inputs):
    base = {"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "securityGroupId": "sg-galera-t-id"}
    base.update(inputs)
    return res(RULE, name, {k: v for k, v in base.items() if v is not None})


def only(diags, policy):
    return [d for d in diags if d.policy == policy]


def assert_violation(diags, policy, name, level="mandatory"):
    hits = only(diags, policy)
    assert len(hits) == 1, "\n".join(map(str, diags))
    d = hits[0]
    assert d.level == level
    assert f"'{name}'" in d.message and "Fix:" in d.message, d.message
    return d


# --- the pack itself ------------------------------------------------------------------------------

def test_analyzer_info(pack):
    info = pack.info()
    assert info.name == "keystone-multiregion" and info.supportsConfig
    levels = {p.name: p.enforcementLevel for p in info.policies}
    assert levels == {**{n: 1 for n in MANDATORY}, **{n: 0 for n in ADVISORY}}  # 1 MANDATORY, 0 ADVISORY
    kinds = {p.name: p.policy_type for p in info.policies}
    assert {n for n, k in kinds.items() if k == 2} == STACK_POLICIES  # 2 = POLICY_TYPE_STACK
    ssh = next(p for p in info.policies if p.name == "ssh-only-from-admin-cidr")
    # The admin CIDR the pack enforces by default is the topology's.
    assert ssh.configSchema.properties["adminCidr"]["default"] == TOPO.admin_cidr == "198.51.100.0/24"


def test_service_ports_match_the_security_table():
    assert set(policies.SERVICE_PORTS) == {PORTS[k] for k in ("mysql", "galera_replication", "galera_ist",
                                                                  "galera_sst", "galera_health", "memcached",
                                                                  "keystone", "mysqld_exporter",
                                                                  "haproxy_metrics", "node_exporter")} | {MONITOR_PORT}
    assert policies.SSH_PORT == PORTS["ssh"] and policies.HTTPS_PORT == PORTS["https"]
    assert policies.VRRP_PROTOCOL == VRRP_PROTOCOL


# --- no service port open to the world ----------------------------------------------------------

@pytest.mark.parametrize("inputs, opened", [
    ({"portRangeMin": 3306, "portRangeMax": 3306, "remoteIpPrefix": "0.0.0.0/0"}, "3306 (MySQL client)"),
    ({"protocol": "udp", "ethertype": "IPv6", "portRangeMin": 4567, "portRangeMax": 4567,
      "remoteIpPrefix": "::/0"}, "4567 (Galera replication)"),
    ({"portRangeMin": 4444, "portRangeMax": 4444}, "4444 (Galera SST)"),  # no remote at all: anywhere
    ({"portRangeMin": 9000, "portRangeMax": 9300, "remoteIpPrefix": "0.0.0.0/0"}, "9200 (Galera health check)"),
    ({"protocol": None, "remoteIpPrefix": "0.0.0.0/0"}, "11211 (memcached)"),  # every protocol and port
])
def test_service_port_open_to_world_fails(pack, inputs, opened):
    d = assert_violation(pack.analyze(rule(**inputs)), "no-service-port-open-to-world", "sg-galera-t-rule")
    assert opened in d.message and "never 0.0.0.0/0" in d.message


@pytest.mark.parametrize("inputs", [
    {"portRangeMin": 3306, "portRangeMax": 3306, "remoteIpPrefix": "10.10.1.42/32"},
    {"portRangeMin": 11211, "portRangeMax": 11211, "remoteGroupId": "sg-keystone-t-id"},
    {"portRangeMin": 443, "portRangeMax": 443, "remoteIpPrefix": "0.0.0.0/0"},
    {"protocol": "icmp", "remoteIpPrefix": "0.0.0.0/0"},
    {"direction": "egress", "portRangeMin": 3306, "portRangeMax": 3306, "remoteIpPrefix": "0.0.0.0/0"},
])
def test_service_port_open_to_peers_passes(pack, inputs):
    assert only(pack.analyze(rule(**inputs)), "no-service-port-open-to-world") == []



# --- "the world": anything outside the regions' networks and the admin network -------------------

TRUSTED = [r.cidr for r in TOPO.regions] + [TOPO.admin_cidr]


@pytest.mark.parametrize("inputs, opened", [
    # The internet in two halves: neither rule is /0, each one is the world.
    ({"portRangeMin": 3306, "portRangeMax": 3306, "remoteIpPrefix": "0.0.0.0/1"}, "3306 (MySQL client)"),
    ({"portRangeMin": 3306, "portRangeMax": 3306, "remoteIpPrefix": "128.0.0.0/1"}, "3306 (MySQL client)"),
    # IPv6: every global unicast address, and no IPv6 network is a region's.
    ({"ethertype": "IPv6", "portRangeMin": 3306, "portRangeMax": 3306, "remoteIpPrefix": "2000::/3"},
     "3306 (MySQL client)"),
    # Wider than a region's network.
    ({"portRangeMin": 3306, "portRangeMax": 3306, "remoteIpPrefix": "10.10.0.0/16"}, "3306 (MySQL client)"),
    # VRRP, by number and by name: anyone could take the VIPs over.
    ({"protocol": "112", "remoteIpPrefix": "0.0.0.0/0"}, "IP protocol 112 (VRRP)"),
    ({"protocol": "vrrp", "remoteIpPrefix": "0.0.0.0/0"}, "IP protocol 112 (VRRP)"),
    ({"protocol": "112", "ethertype": "IPv6"}, "IP protocol 112 (VRRP)"),  # no remote: ::/0
    # Keystone's plain-HTTP internal endpoint and HAProxy's monitor.
    ({"portRangeMin": 5000, "portRangeMax": 5000, "remoteIpPrefix": "0.0.0.0/0"},
     "5000 (Keystone internal endpoint, plain HTTP)"),
    ({"portRangeMin": 8404, "portRangeMax": 8404, "remoteIpPrefix": "203.0.113.0/24"}, "8404 (HAProxy monitor)"),
    # Every protocol ("any", empty or none): every port and VRRP too.
    ({"protocol": "any", "remoteIpPrefix": "0.0.0.0/1"}, "IP protocol 112 (VRRP)"),
    ({"protocol": "", "remoteIpPrefix": "192.0.2.0/24"}, "5000 (Keystone internal endpoint, plain HTTP)"),
    ({"protocol": None, "remoteIpPrefix": "2000::/3", "ethertype": "IPv6"}, "3306 (MySQL client)"),
    # An address group's addresses are not visible to the pack: it may hold 0.0.0.0/0.
    ({"portRangeMin": 3306, "portRangeMax": 3306, "remoteAddressGroupId": "ag-1"}, "3306 (MySQL client)"),
])
def test_guarded_port_open_beyond_the_regions_fails(pack, inputs, opened):
    d = assert_violation(pack.analyze(rule(**inputs)), "no-service-port-open-to-world", "sg-galera-t-rule")
    assert opened in d.message and "outside the regions' networks and the admin network" in d.message, d.message


@pytest.mark.parametrize("inputs", [
    {"portRangeMin": 3306, "portRangeMax": 3306, "remoteIpPrefix": "10.10.2.0/24"},  # a region's network
    {"portRangeMin": 5000, "portRangeMax": 5000, "remoteIpPrefix": "10.10.1.0/24"},
    {"protocol": "112", "remoteIpPrefix": "10.10.1.26/32"},  # VRRP from the other proxy
    {"protocol": "vrrp", "remoteGroupId": "sg-proxy-t-id"},
    {"protocol": None, "remoteIpPrefix": "10.10.3.0/24"},  # everything, but from a region only
    {"portRangeMin": 8404, "portRangeMax": 8404, "remoteIpPrefix": "198.51.100.7/32"},  # the admin network
])
def test_guarded_port_open_inside_the_regions_passes(pack, inputs):
    assert only(pack.analyze(rule(**inputs)), "no-service-port-open-to-world") == []


def test_the_world_is_the_topologys_complement(pack):
    """The trusted networks the pack uses by default are the topology's, and config overrides them."""
    info = {p.name: p for p in pack.info().policies}
    for name in ("no-service-port-open-to-world", "world-open-only-https"):
        assert list(info[name].configSchema.properties["trustedCidrs"]["default"]) == TRUSTED
    assert policies.trusted_cidrs_from_topology(ROOT / "topology.yaml") == TRUSTED
    assert policies.trusted_cidrs_from_topology(ROOT / "no-such-topology.yaml") is None

    ours = rule(portRangeMin=3306, portRangeMax=3306, remoteIpPrefix="10.10.1.0/24")
    theirs = rule(portRangeMin=3306, portRangeMax=3306, remoteIpPrefix="192.0.2.0/24")
    try:
        pack.configure({"no-service-port-open-to-world": {"trustedCidrs": ["192.0.2.0/24"]}})
        assert only(pack.analyze(theirs), "no-service-port-open-to-world") == []
        assert_violation(pack.analyze(ours), "no-service-port-open-to-world", "sg-galera-t-rule")
    finally:
        pack.configure()
    assert only(pack.analyze(ours), "no-service-port-open-to-world") == []


def test_a_monitoring_network_of_its_own_is_trusted(tmp_path):
    """The exporters' rules come from monitoring.cidr: not the world when it is its own network."""
    data = yaml.safe_load((ROOT / "topology.yaml").read_text())
    data["monitoring"] = {"cidr": "192.0.2.0/28"}
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    assert policies.trusted_cidrs_from_topology(path) == TRUSTED + ["192.0.2.0/28"]

def test_trusted_cidrs_not_a_cidr_is_one_clear_line(pack):
    try:
        pack.configure({"no-service-port-open-to-world": {"trustedCidrs": ["10.10.1.0/24", "region-a"]}})
        d = assert_violation(pack.analyze(rule(portRangeMin=443, portRangeMax=443, remoteIpPrefix="0.0.0.0/0")),
                             "no-service-port-open-to-world", "sg-galera-t-rule")
        assert "trustedCidrs: 'region-a' is not a CIDR" in d.message.splitlines()[-1]
    finally:
        pack.configure()


def test_without_trusted_networks_every_prefix_is_the_world():
    """A pack without the project's topology and without config fails closed."""
    reports = []
    policies.check_service_ports_not_world_open(
        "r", {"direction": "ingress", "protocol": "tcp", "portRangeMin": 3306, "portRangeMax": 3306,
              "remoteIpPrefix": "10.10.1.42/32"}, None, reports.append)
    assert len(reports) == 1 and "knows no regions' networks" in reports[0] and "trustedCidrs" in reports[0]


@pytest.mark.parametrize("inputs, what", [
    ({"portRangeMin": 8080, "portRangeMax": 8080, "remoteIpPrefix": "0.0.0.0/1"}, "tcp 8080"),
    ({"protocol": "icmp", "remoteIpPrefix": "0.0.0.0/0"}, "icmp"),
    ({"protocol": "47", "remoteIpPrefix": "2000::/3", "ethertype": "IPv6"}, "47"),  # GRE
])
def test_other_protocols_beyond_the_regions_are_advisory(pack, inputs, what):
    diags = pack.analyze(rule(**inputs))
    assert only(diags, "no-service-port-open-to-world") == []
    d = assert_violation(diags, "world-open-only-https", "sg-galera-t-rule", level="advisory")
    assert what in d.message

# --- SSH only from the admin CIDR ------------------------------------------------------------------

@pytest.mark.parametrize("inputs", [
    {"portRangeMin": 22, "portRangeMax": 22, "remoteIpPrefix": "0.0.0.0/0"},
    {"portRangeMin": 22, "portRangeMax": 22, "remoteIpPrefix": "10.0.0.0/8"},
    {"portRangeMin": 22, "portRangeMax": 22, "remoteIpPrefix": "198.51.0.0/16"},  # wider than the admin CIDR
    {"portRangeMin": 22, "portRangeMax": 22, "remoteGroupId": "sg-proxy-t-id"},
    {"portRangeMin": 1, "portRangeMax": 65535, "remoteIpPrefix": "203.0.113.0/24"},
])
def test_ssh_from_elsewhere_fails(pack, inputs):
    d = assert_violation(pack.analyze(rule(**inputs)), "ssh-only-from-admin-cidr", "sg-galera-t-rule")
    assert f"set remote_ip_prefix to {TOPO.admin_cidr}" in d.message


@pytest.mark.parametrize("inputs", [
    {"portRangeMin": 22, "portRangeMax": 22, "remoteIpPrefix": "198.51.100.0/24"},
    {"portRangeMin": 22, "portRangeMax": 22, "remoteIpPrefix": "198.51.100.7/32"},  # inside it
    {"portRangeMin": 443, "portRangeMax": 443, "remoteIpPrefix": "0.0.0.0/0"},
])
def test_ssh_from_admin_cidr_passes(pack, inputs):
    assert only(pack.analyze(rule(**inputs)), "ssh-only-from-admin-cidr") == []


def test_ssh_admin_cidr_from_pack_config(pack):
    """`--policy-pack-config` overrides the topology's admin CIDR."""
    from_topology = rule(portRangeMin=22, portRangeMax=22, remoteIpPrefix="198.51.100.0/24")
    from_config = rule(portRangeMin=22, portRangeMax=22, remoteIpPrefix="203.0.113.0/24")
    try:
        pack.configure({"ssh-only-from-admin-cidr": {"adminCidr": "203.0.113.0/24"}})
        assert only(pack.analyze(from_config), "ssh-only-from-admin-cidr") == []
        d = assert_violation(pack.analyze(from_topology), "ssh-only-from-admin-cidr", "sg-galera-t-rule")
        assert "only the admin CIDR 203.0.113.0/24" in d.message
    finally:
        pack.configure()
    assert only(pack.analyze(from_topology), "ssh-only-from-admin-cidr") == []


def test_ssh_without_any_admin_cidr_fails():
    """A pack without the project's topology and without config refuses every SSH rule."""
    assert policies.admin_cidr_from_topology(ROOT / "no-such-topology.yaml") is None
    reports = []
    policies.check_ssh_only_from_admin(
        "r", {"direction": "ingress", "protocol": "tcp", "portRangeMin": 22, "portRangeMax": 22,
              "remoteIpPrefix": "198.51.100.0/24"}, None, reports.append)
    assert len(reports) == 1 and "knows no admin CIDR" in reports[0] and "adminCidr" in reports[0]


# --- catalog endpoints -----------------------------------------------------------------------------

def endpoint(url, interface="public", name="endpoint-identity-t"):
    inputs = {"url": url, "serviceId": "service-identity-id", "endpointRegion": "region-a"}
    if interface:
        inputs["interface"] = interface
    return res(policies.ENDPOINT, name, inputs)


@pytest.mark.parametrize("url, interface, expected", [
    ("https://identity.region-a.example.com/v3", "public", "Fix: set url to https://identity.region-a.example.com"),
    ("https://identity.region-a.example.com/v2.0/", "public", "/v2.0 in its path"),
    ("http://10.10.1.10:5000/v3", "internal", "Fix: set url to http://10.10.1.10:5000."),
    ("http://identity.region-a.example.com", "public", "Fix: set url to https://identity.region-a.example.com"),
    ("http://identity.region-a.example.com", None, "is public"),  # the provider's default interface
    ("identity.region-a.example.com", "public", "not an absolute URL"),
])
def test_endpoint_versioned_or_plain_http_fails(pack, url, interface, expected):
    d = assert_violation(pack.analyze(endpoint(url, interface)), "catalog-endpoint-unversioned-https",
                         "endpoint-identity-t")
    assert expected in d.message


def test_endpoint_versioned_and_plain_http_reports_both(pack):
    diags = only(pack.analyze(endpoint("http://identity.region-a.example.com/v3")), "catalog-endpoint-unversioned-https")
    assert len(diags) == 2 and all(d.level == "mandatory" for d in diags)


@pytest.mark.parametrize("url, interface", [
    ("https://identity.region-a.example.com", "public"),
    ("https://identity.region-a.example.com/", "public"),
    ("http://10.10.1.10:5000", "internal"),
    ("https://identity.region-a.example.com/identity", "admin"),  # a path, but no version
])
def test_endpoint_unversioned_passes(pack, url, interface):
    assert pack.analyze(endpoint(url, interface)) == []


# --- anti-affinity (stack policy) ------------------------------------------------------------------

def server_group(name, policy, id=None):
    return res(policies.SERVER_GROUP, name, {"name": name, "policies": policy}, id=id)


def instance(name, role, hints, *, deps=None, **extra):
    inputs = {"name": name, "flavorName": "m1.small",
              "metadata": {policies.ROLE_KEY: role} if role else {}, **extra}
    if hints is not None:
        inputs["schedulerHints"] = [{"group": g} for g in hints]
    node = res(policies.INSTANCE, f"instance-{name}", inputs, deps=deps)
    node.ignore_changes = ["userData"]  # as every VM of the program
    return node


def test_anti_affinity_passes(pack):
    group = server_group("servergroup-keystone-t", "anti-affinity", id="sg-1")
    by_id = instance("keystone-t-1", "keystone", ["sg-1"])
    # Preview of a new stack: the group's id is unknown; the property dependency names it.
    by_dependency = instance("keystone-t-2", "keystone", [UNKNOWN], deps={"schedulerHints": [group.urn]})
    bastion = instance("bastion-t-1", "bastion", None)  # explicitly not a control-plane role
    # (Two Keystone nodes without files pushes: the one-node-at-a-time policy's business.)
    assert only(pack.analyze_stack([group, by_id, by_dependency, bastion]), "control-plane-anti-affinity") == []


@pytest.mark.parametrize("hints, group_policy, expected", [
    (None, "anti-affinity", "has no scheduler hint group"),
    (["sg-1"], "soft-anti-affinity", "not an anti-affinity one"),
    (["sg-1"], "affinity", "not an anti-affinity one"),
    (["sg-elsewhere"], "anti-affinity", "not a server group of this stack"),
])
def test_anti_affinity_fails(pack, hints, group_policy, expected):
    group = server_group("servergroup-galera-t", group_policy, id="sg-1")
    node = instance("galera-t-1", "galera", hints)
    d = assert_violation(pack.analyze_stack([group, node]), "control-plane-anti-affinity", "instance-galera-t-1")
    assert expected in d.message and d.urn == node.urn


def test_anti_affinity_applies_to_instances_without_role(pack):
    d = assert_violation(pack.analyze_stack([instance("vm-t-1", None, None)]), "control-plane-anti-affinity",
                         "instance-vm-t-1")
    assert "control-plane instance" in d.message


# --- Galera volumes protected (stack policy) -------------------------------------------------------

def galera_with_volume(protect, volume_name="volume-data-t-1", description="data"):
    volume = res(policies.VOLUME, volume_name, {"size": 20, "description": description}, protect=protect)
    group = server_group("servergroup-galera-t", "anti-affinity", id="sg-1")
    node = instance("galera-t-1", "galera", ["sg-1"], blockDevices=[
        {"sourceType": "image", "uuid": "image-id", "bootIndex": 0, "destinationType": "local"},
        {"sourceType": "volume", "uuid": volume.outputs["id"], "bootIndex": -1, "destinationType": "volume"}])
    return [volume, group, node]


def test_galera_volume_unprotected_fails(pack):
    d = assert_violation(pack.analyze_stack(galera_with_volume(False)), "galera-volume-protected", "volume-data-t-1")
    assert "attached to Galera node 'instance-galera-t-1'" in d.message and "protect=True" in d.message


def test_galera_volume_attached_later_unprotected_fails(pack):
    """Attached by a VolumeAttach (preview: ids unknown, dependencies known)."""
    volume = res(policies.VOLUME, "volume-data-t-2", {"size": 20}, id=UNKNOWN)
    node = instance("galera-t-2", "galera", None)
    attach = res(policies.VOLUME_ATTACH, "attach-t-2", {"instanceId": UNKNOWN, "volumeId": UNKNOWN},
                 deps={"instanceId": [node.urn], "volumeId": [volume.urn]})
    diags = pack.analyze_stack([volume, node, attach])
    d = assert_violation(diags, "galera-volume-protected", "volume-data-t-2")
    assert "attached to a Galera node by 'attach-t-2'" in d.message
    volume.protect = True
    assert only(pack.analyze_stack([volume, node, attach]), "galera-volume-protected") == []


def test_galera_volume_named_unprotected_fails(pack):
    """Found by its name even when no instance of the stack attaches it."""
    volume = res(policies.VOLUME, "volume-galera-t-9", {"size": 20, "description": "Galera data of galera-t-9"})
    assert_violation(pack.analyze_stack([volume]), "galera-volume-protected", "volume-galera-t-9")


def test_galera_volume_protected_passes(pack):
    assert pack.analyze_stack(galera_with_volume(True)) == []
    other = res(policies.VOLUME, "volume-scratch-t", {"size": 5, "description": "scratch space"})
    assert pack.analyze_stack([other]) == []  # not Galera data: no opinion


# --- Galera security groups not shared with public proxies (stack policy) -------------------------

def nodes_with_groups(galera_groups, proxy_groups, vip_groups):
    groups = [res(policies.SECGROUP, f"sg-{r}-t", {"name": f"keystone-t-{r}"}) for r in ("galera", "proxy")]
    sgg = server_group("servergroup-t", "anti-affinity", id="sg-1")
    out = groups + [sgg]
    for role, sgs in (("galera", galera_groups), ("proxy", proxy_groups)):
        port = res(policies.PORT, f"port-{role}-t-1", {"securityGroupIds": [f"sg-{g}-t-id" for g in sgs]})
        out += [port, instance(f"{role}-t-1", role, ["sg-1"], networks=[{"port": port.outputs["id"]}])]
    vip = res(policies.PORT, "port-vip-t-public-1", {"securityGroupIds": [f"sg-{g}-t-id" for g in vip_groups]})
    fip = res(policies.FLOATING_IP, "fip-vip-t-public-1", {"pool": "public"})
    assoc = res(policies.FLOATING_IP_ASSOCIATE, "fip-assoc-vip-t-public-1",
                {"portId": vip.outputs["id"], "floatingIp": "203.0.113.1"})
    return out + [vip, fip, assoc]


@pytest.mark.parametrize("galera, proxy, vip, sharer", [
    (["galera", "proxy"], ["proxy"], ["proxy"], "proxy port 'port-proxy-t-1'"),
    (["galera"], ["proxy", "galera"], ["proxy"], "proxy port 'port-proxy-t-1'"),
    (["galera"], ["proxy"], ["proxy", "galera"], "port 'port-vip-t-public-1' (floating IP 'fip-assoc-vip-t-public-1')"),
])
def test_galera_group_shared_with_public_fails(pack, galera, proxy, vip, sharer):
    d = assert_violation(pack.analyze_stack(nodes_with_groups(galera, proxy, vip)),
                         "galera-security-group-not-public", "instance-galera-t-1")
    assert sharer in d.message


def test_galera_group_of_its_own_passes(pack):
    assert pack.analyze_stack(nodes_with_groups(["galera"], ["proxy"], ["proxy"])) == []


# --- advisories ------------------------------------------------------------------------------------

def test_user_data_near_nova_limit_is_advisory(pack):
    # Plain text (not base64): sent base64-encoded, 4/3 of its size.
    big = instance("keystone-t-1", "keystone", ["sg-1"], userData="#" * 40_000)
    big.secret_keys = {"userData"}  # user data carrying secrets reaches the pack as a secret
    d = assert_violation(pack.analyze(big), "user-data-size", "instance-keystone-t-1", level="advisory")
    assert "40000 bytes of user data, 53336 as sent" in d.message and "close to" in d.message
    too_big = instance("keystone-t-2", "keystone", ["sg-1"], userData="#" * 50_000)
    d = assert_violation(pack.analyze(too_big), "user-data-size", "instance-keystone-t-2", level="advisory")
    assert "cannot be created" in d.message
    small = instance("keystone-t-3", "keystone", ["sg-1"], userData="#cloud-config\n" + "x" * 1000)
    assert pack.analyze(small) == []
    # Base64 already (as the stacks send it, gzip + base64): sent as it is.
    encoded = instance("keystone-t-4", "keystone", ["sg-1"], userData="QUJD" * 13_000)
    d = assert_violation(pack.analyze(encoded), "user-data-size", "instance-keystone-t-4", level="advisory")
    assert "52000 bytes of user data, 52000 as sent" in d.message and "close to" in d.message
    assert pack.analyze(instance("keystone-t-5", "keystone", ["sg-1"], userData="QUJD" * 10_000)) == []


def test_other_world_open_port_is_advisory(pack):
    d = assert_violation(pack.analyze(rule(portRangeMin=5001, portRangeMax=5001, remoteIpPrefix="0.0.0.0/0")),
                         "world-open-only-https", "sg-galera-t-rule", level="advisory")
    assert "tcp 5001" in d.message
    assert pack.analyze(rule(portRangeMin=443, portRangeMax=443, remoteIpPrefix="0.0.0.0/0")) == []
    assert pack.analyze(rule(portRangeMin=443, portRangeMax=443, remoteIpPrefix="::/0", ethertype="IPv6")) == []


def test_keystone_internal_port_to_the_world_is_mandatory(pack):
    """5000 serves plain HTTP: no longer only advisory."""
    diags = pack.analyze(rule(portRangeMin=5000, portRangeMax=5000, remoteIpPrefix="0.0.0.0/0"))
    assert_violation(diags, "no-service-port-open-to-world", "sg-galera-t-rule")
    assert only(diags, "world-open-only-https") == []  # one report, from the mandatory policy


def test_value_unknown_in_preview_is_not_a_violation(pack):
    """A rule whose remote is computed: the SDK's advisory, and the policy runs again at `up`."""
    diags = pack.analyze(rule(portRangeMin=3306, portRangeMax=3306, remoteIpPrefix=UNKNOWN))
    assert diags and all(d.level == "advisory" and "can't be known during preview" in d.message for d in diags)


# --- every example stack ---------------------------------------------------------------------------

@pytest.mark.parametrize("preview", [False, True], ids=["after-up", "preview-new-stack"])
@pytest.mark.parametrize("stack", STACKS)
def test_example_stack_passes(pack, runs, stack, preview):
    resources = stack_requests(stack, runs[stack].resources, preview=preview)
    diags = pack.analyze_all(resources)
    # No mandatory violation, and every policy could decide (nothing left for `up`). The
    # user-data advisory is a heads-up for the layers to come, not a gate.
    assert [str(d) for d in diags if d.policy != "user-data-size"] == []
    assert all(d.level == "advisory" for d in diags)
    if stack != "shared":
        types = {r.type for r in resources}
        assert {policies.SECGROUP_RULE, policies.INSTANCE, policies.SERVER_GROUP, policies.VOLUME,
                policies.PORT, policies.FLOATING_IP_ASSOCIATE} <= types


def _mutate(registered, name, change):
    out = []
    for r in registered:
        if r.name == name:
            r = dataclasses.replace(r, inputs=copy.deepcopy(r.inputs))
            change(r)
        out.append(r)
    return out


def _set(key, value):
    return lambda r: r.inputs.__setitem__(key, value)


def _unprotect(r):
    r.protect = False


MUTATIONS = {
    "volume unprotected": ("volume-galera-region-a-2", _unprotect, "galera-volume-protected",
                           "volume-galera-region-a-2"),
    "galera port in the proxy group": ("port-galera-region-a-1", _set("securityGroupIds", ["sg-galera-region-a-id",
                                                                                         "sg-proxy-region-a-id"]),
                                       "galera-security-group-not-public", "instance-galera-region-a-1"),
    "keystone node without hint": ("instance-keystone-region-a-3", lambda r: r.inputs.pop("schedulerHints"),
                                   "control-plane-anti-affinity", "instance-keystone-region-a-3"),
    "memcached group soft": ("servergroup-memcached-region-a", _set("policies", "soft-anti-affinity"),
                             "control-plane-anti-affinity", "instance-memcached-region-a-1"),
    "ssh from anywhere": ("sg-galera-region-a-tcp-22-from-198-51-100-0-24", _set("remoteIpPrefix", "0.0.0.0/0"),
                          "ssh-only-from-admin-cidr", "sg-galera-region-a-tcp-22-from-198-51-100-0-24"),
    "key push without host key": ("keys-keystone-region-a-2", lambda r: r.inputs["connection"].pop("hostKey"),
                                  "remote-command-pins-host-key", "keys-keystone-region-a-2"),
    "database port to the world": ("sg-galera-region-a-tcp-3306-from-10-10-2-42-32",
                                   _set("remoteIpPrefix", "0.0.0.0/0"), "no-service-port-open-to-world",
                                   "sg-galera-region-a-tcp-3306-from-10-10-2-42-32"),
    "database port to half the internet": ("sg-galera-region-a-tcp-3306-from-10-10-2-42-32",
                                           _set("remoteIpPrefix", "128.0.0.0/1"), "no-service-port-open-to-world",
                                           "sg-galera-region-a-tcp-3306-from-10-10-2-42-32"),
    "internal endpoint to the world": ("sg-proxy-region-a-tcp-5000-from-10-10-1-0-24",
                                       _set("remoteIpPrefix", "0.0.0.0/0"), "no-service-port-open-to-world",
                                       "sg-proxy-region-a-tcp-5000-from-10-10-1-0-24"),
    "backup container unprotected": ("backup-region-a", _unprotect, "backup-container-protected",
                                     "backup-region-a"),
    "backup container force-destroyed": ("backup-region-a", _set("forceDestroy", True),
                                         "backup-container-protected", "backup-region-a"),
    "backup container in another cloud region": ("backup-region-a", _set("region", "region-b"),
                                                 "backup-container-protected", "backup-region-a"),
    "backup container renamed": ("backup-region-a", _set("name", "keystone-backups-region-x"),
                                 "backup-container-protected", "instance-galera-region-a-1"),
    "VRRP from the world": ("sg-proxy-region-a-vrrp-from-sg-proxy",
                            lambda r: (r.inputs.pop("remoteGroupId"),
                                       r.inputs.__setitem__("remoteIpPrefix", "0.0.0.0/0")),
                            "no-service-port-open-to-world", "sg-proxy-region-a-vrrp-from-sg-proxy"),
}


@pytest.mark.parametrize("preview", [False, True], ids=["after-up", "preview-new-stack"])
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_example_stack_mutation_is_caught(pack, runs, mutation, preview):
    """The pack really reads the program's resources: one bad change to region-a is refused."""
    target, change, policy, culprit = MUTATIONS[mutation]
    registered = runs["region-a"].resources
    assert any(r.name == target for r in registered), f"no resource {target} in region-a"
    resources = stack_requests("region-a", _mutate(registered, target, change), preview=preview)
    mandatory = [d for d in pack.analyze_all(resources) if d.level == "mandatory"]
    assert {d.policy for d in mandatory} == {policy}, "\n".join(map(str, mandatory))
    assert any(f"'{culprit}'" in d.message for d in mandatory), "\n".join(map(str, mandatory))


# --- remote commands pin host keys ----------------------------------------------------------------

def push(connection):
    return res(policies.REMOTE_COMMAND, "keys-keystone-t-1",
               {"create": "sudo python3 /usr/local/sbin/keystone-node install-keys", "stdin": "{}",
                "connection": connection}, secret=("connection", "stdin"))


def test_key_push_without_host_key_fails(pack):
    d = assert_violation(pack.analyze(push({"host": "10.0.0.5", "user": "debian", "privateKey": "k"})),
                         "remote-command-pins-host-key", "keys-keystone-t-1")
    assert "'10.0.0.5' without a pinned host key" in d.message


def test_key_push_with_host_key_passes(pack):
    diags = pack.analyze(push({"host": "10.0.0.5", "user": "debian", "privateKey": "k",
                               "hostKey": "ssh-ed25519 AAAA"}))
    assert only(diags, "remote-command-pins-host-key") == [] and only(diags, "bastion-pins-host-key") == []


def test_key_push_host_key_unknown_in_preview_is_not_a_violation(pack):
    """A new node's host key is made in the same update: the SDK's advisory, checked again at `up`."""
    diags = only(pack.analyze(push({"host": "10.0.0.5", "user": "debian", "privateKey": "k", "hostKey": UNKNOWN})),
                 "remote-command-pins-host-key")
    assert diags and all(d.level == "advisory" and "can't be known during preview" in d.message for d in diags)


def test_bastion_without_host_key_is_advisory(pack):
    diags = pack.analyze(push({"host": "10.0.0.5", "hostKey": "ssh-ed25519 AAAA", "privateKey": "k",
                               "proxy": {"host": "198.51.100.7", "privateKey": "k"}}))
    assert only(diags, "remote-command-pins-host-key") == []
    d = assert_violation(diags, "bastion-pins-host-key", "keys-keystone-t-1", level="advisory")
    assert "sshBastionHostKey" in d.message


# --- one node of a role at a time (stack policy) ---------------------------------------------------

def test_stateful_roles_match_the_program():
    from components.nodes import STATEFUL_ROLES
    assert policies.STATEFUL_ROLES == STATEFUL_ROLES


def _without_dependency(on):
    """A change dropping the resource's dependency on `on` (as if depends_on left it out)."""
    def change(r):
        r.dependencies = [d for d in r.dependencies if not d.endswith(f"::{on}")]
    return change


def _one_node_diags(pack, runs, changes, preview):
    """The mandatory violations of region-a with `changes` ({resource name: change})."""
    registered = runs["region-a"].resources
    for target, change in changes.items():
        assert any(r.name == target for r in registered), f"no resource {target} in region-a"
        registered = _mutate(registered, target, change)
    resources = stack_requests("region-a", registered, preview=preview)
    return [d for d in pack.analyze_all(resources) if d.level == "mandatory"]


@pytest.mark.parametrize("preview", [False, True], ids=["after-up", "preview-new-stack"])
def test_proxy_pushes_not_chained_are_refused(pack, runs, preview):
    """The second proxy's push and VM no longer wait for the first proxy's push: both proxies
    could be pushed (or replaced) together, and the region's VIPs lose both holders."""
    mandatory = _one_node_diags(pack, runs, {
        "files-proxy-region-a-2": _without_dependency("files-proxy-region-a-1"),
        "instance-proxy-region-a-2": _without_dependency("files-proxy-region-a-1")}, preview)
    assert {d.policy for d in mandatory} == {"one-node-at-a-time"}, "\n".join(map(str, mandatory))
    [d] = mandatory
    assert ("proxy nodes 'instance-proxy-region-a-1' and 'instance-proxy-region-a-2' of region-a could be "
            "replaced or pushed at the same time") in d.message, d.message
    assert "'files-proxy-region-a-2' does not wait for 'files-proxy-region-a-1'" in d.message
    assert "'instance-proxy-region-a-2' does not wait for 'files-proxy-region-a-1'" in d.message
    assert "Fix:" in d.message and d.urn.endswith("::instance-proxy-region-a-2")


@pytest.mark.parametrize("preview", [False, True], ids=["after-up", "preview-new-stack"])
def test_instance_not_waiting_for_previous_push_is_refused(pack, runs, preview):
    """Keystone node 2's VM no longer waits for node 1's push: it could be replaced while node
    1 restarts. Node 3 still waits for node 2's push, so only the pair (1, 2) is reported."""
    mandatory = _one_node_diags(pack, runs, {
        "instance-keystone-region-a-2": _without_dependency("files-keystone-region-a-1")}, preview)
    assert {d.policy for d in mandatory} == {"one-node-at-a-time"}, "\n".join(map(str, mandatory))
    [d] = mandatory
    assert "keystone nodes 'instance-keystone-region-a-1' and 'instance-keystone-region-a-2'" in d.message
    assert "'instance-keystone-region-a-2' does not wait for 'files-keystone-region-a-1'" in d.message
    assert "'files-keystone-region-a-2' does not wait" not in d.message


@pytest.mark.parametrize("preview", [False, True], ids=["after-up", "preview-new-stack"])
def test_push_waiting_through_its_own_vm_is_chained(pack, runs, preview):
    """Without its direct dependency, node 2's push still waits for node 1's: it waits for
    node 2's VM (its triggers), which waits for node 1's push. The engine orders them."""
    mandatory = _one_node_diags(pack, runs, {
        "files-memcached-region-a-2": _without_dependency("files-memcached-region-a-1")}, preview)
    assert mandatory == []


@pytest.mark.parametrize("preview", [False, True], ids=["after-up", "preview-new-stack"])
def test_push_not_tied_to_its_vm_is_refused(pack, runs, preview):
    """A push whose triggers no longer hold its VM's id: it would not run for a new VM, and
    nothing makes it wait for that VM, so the chain is broken."""
    def untie(r):
        r.inputs.pop("triggers")
        r.dependencies = [d for d in r.dependencies if not d.endswith("::instance-galera-region-a-3")]
    mandatory = _one_node_diags(pack, runs, {"files-galera-region-a-3": untie}, preview)
    assert {d.policy for d in mandatory} == {"one-node-at-a-time"}, "\n".join(map(str, mandatory))
    [d] = mandatory
    assert "galera node 'instance-galera-region-a-3' of region-a has no files push tied to it" in d.message


@pytest.mark.parametrize("preview", [False, True], ids=["after-up", "preview-new-stack"])
def test_galera_node_taking_user_data_changes_is_refused(pack, runs, preview):
    """The engine passes each resource's ignoreChanges to the analyzer: a Galera VM that
    would be rebuilt for a changed file (its image and volume still ignored) is refused."""
    def keep_user_data(r):
        r.ignore_changes = [p for p in r.ignore_changes if p != "userData"]
    mandatory = _one_node_diags(pack, runs, {"instance-galera-region-a-2": keep_user_data}, preview)
    assert {d.policy for d in mandatory} == {"one-node-at-a-time"}, "\n".join(map(str, mandatory))
    [d] = mandatory
    assert "galera node 'instance-galera-region-a-2' does not ignore changes to its user_data" in d.message
    assert "Fix:" in d.message and d.urn.endswith("::instance-galera-region-a-2")


def test_arbitrator_taking_user_data_changes_is_refused(pack):
    """Synthetic: the example topology has no arbitrator."""
    node = res(policies.INSTANCE, "instance-garbd-t-1",
               {"name": "garbd-t-1", "metadata": {policies.ROLE_KEY: "arbitrator", policies.REGION_KEY: "t"}})
    d = assert_violation(pack.analyze_stack([node]), "one-node-at-a-time", "instance-garbd-t-1")
    assert "arbitrator node 'instance-garbd-t-1' does not ignore changes to its user_data" in d.message
    node.ignore_changes = ["userData"]
    assert only(pack.analyze_stack([node]), "one-node-at-a-time") == []


# --- the database backups ---------------------------------------------------------------------------

def test_backup_policies_default_to_the_topologys_backups(pack):
    info = {p.name: p for p in pack.info().policies}
    for name in ("backup-container-protected", "backup-store-https"):
        default = info[name].configSchema.properties["backup"]["default"]
        assert default["containers"] == {r.name: {"container": f"keystone-backups-{r.name}", "region": r.name}
                                         for r in TOPO.regions}
        assert default["authUrl"] == TOPO.backup.store.auth_url
        assert (default["storeCidr"], default["adminCidr"]) == (TOPO.backup.store.cidr, TOPO.admin_cidr)
    assert policies.backup_from_topology(ROOT / "no-such-topology.yaml") is None


@pytest.mark.parametrize("preview", [False, True], ids=["after-up", "preview-new-stack"])
def test_region_stack_without_its_backup_container_is_refused(pack, runs, preview):
    """The container removed from region-a's program: the stack policy must fail, and does,
    naming the region and the container the Galera nodes would look for."""
    registered = [r for r in runs["region-a"].resources if r.type != policies.CONTAINER]
    assert len(registered) == len(runs["region-a"].resources) - 1
    diags = pack.analyze_all(stack_requests("region-a", registered, preview=preview))
    d = assert_violation([d for d in diags if d.level == "mandatory"], "backup-container-protected",
                         "instance-galera-region-a-1")
    assert "region region-a" in d.message and "'keystone-backups-region-a'" in d.message
    assert {x.policy for x in diags if x.level == "mandatory"} == {"backup-container-protected"}


def test_without_backups_in_the_topology_no_container_is_required(pack, runs):
    registered = [r for r in runs["region-a"].resources if r.type != policies.CONTAINER]
    try:
        pack.configure({"backup-container-protected": {"backup": {}}})
        diags = pack.analyze_all(stack_requests("region-a", registered))
        assert only(diags, "backup-container-protected") == []
    finally:
        pack.configure()


def _container(name="backup-t", protect=True, **inputs):
    return res(policies.CONTAINER, name, {"name": "keystone-backups-t", "region": "t", **inputs}, protect=protect)


def test_backup_container_alone_unprotected_fails(pack):
    """Protection is required of every Swift container, in any stack (the program creates
    them only for backups)."""
    d = assert_violation(pack.analyze_stack([_container(protect=False)]), "backup-container-protected", "backup-t")
    assert "protect=True, retain_on_delete=True" in d.message
    assert only(pack.analyze_stack([_container()]), "backup-container-protected") == []


@pytest.mark.parametrize("auth_url, store_cidr, advised", [
    ("http://swift.infra.example.com:8080/auth/v1.0", "203.0.113.0/24", True),
    ("HTTP://swift.infra.example.com/auth/v1.0", "203.0.113.0/24", True),
    ("http://198.51.100.20:8080/auth/v1.0", "198.51.100.20/32", False),  # inside admin_cidr (the lab's way)
    ("https://keystone.infra.example.com:5000/v3", "203.0.113.0/24", False),
])
def test_backup_store_over_plain_http_is_advisory(pack, auth_url, store_cidr, advised):
    backup = {**policies.backup_from_topology(ROOT / "topology.yaml"), "authUrl": auth_url, "storeCidr": store_cidr}
    try:
        pack.configure({"backup-store-https": {"backup": backup}})
        diags = pack.analyze(_container())
        if advised:
            d = assert_violation(diags, "backup-store-https", "backup-t", level="advisory")
            assert auth_url in d.message and "clear text" in d.message
        else:
            assert only(diags, "backup-store-https") == []
    finally:
        pack.configure()
