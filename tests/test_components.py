"""The real Pulumi program, run in-process under pulumi.runtime.set_mocks for every stack."""

import pytest
import yaml

from helpers import ROOT, example
from keystone_multiregion.render import decode_user_data, render_node
from keystone_multiregion.secrets import SECRETS
from keystone_multiregion.security import group_members, security_groups
from keystone_multiregion.stacks import region_stacks, stack_config
from keystone_multiregion.topology import load_topology_file
from pulumi_harness import (MOCK_BACKUP_STORE, MOCK_CA_KEY, MOCK_PUBLIC_DEV_CA_KEY, MOCK_SECRETS, last_registered,
                            mock_node_secrets, run_program)

TOPO = load_topology_file(ROOT / "topology.yaml")
REGION_STACKS = region_stacks(ROOT)
SG_RULE = "openstack:networking/secGroupRule:SecGroupRule"
PORT = "openstack:networking/port:Port"
INSTANCE = "openstack:compute/instance:Instance"


def test_example_stacks():
    assert REGION_STACKS == {"region-a": "region-a", "region-b": "region-b", "region-c": "region-c"}
    assert stack_config(ROOT, "shared") == {"shared": True, "allowDevelopmentCertificate": True}
    # The example stacks say they take development certificates, with a comment saying why.
    for stack in REGION_STACKS:
        assert stack_config(ROOT, stack)["allowDevelopmentCertificate"] is True
        assert "A real deployment removes this line" in (ROOT / f"Pulumi.{stack}.yaml").read_text()


@pytest.fixture(scope="module", params=sorted(REGION_STACKS))
def stack(request):
    region = REGION_STACKS[request.param]
    run = run_program(request.param, stack_config(ROOT, request.param))
    return region, run


def _rules(run, region, role):
    """(protocol, port, source): the source is a remote_ip_prefix or a remote group's id."""
    group_id = f"sg-{role}-{region}-id"
    out = set()
    for r in run.of_type(SG_RULE):
        if r.inputs["securityGroupId"] == group_id:
            prefix, group = r.inputs.get("remoteIpPrefix"), r.inputs.get("remoteGroupId")
            assert bool(prefix) != bool(group), r.inputs  # neither would admit anywhere
            out.add((r.inputs["protocol"], r.inputs.get("portRangeMin"), prefix or group))
    return out


def _hosts(nodes):
    return {f"{n.address}/32" for n in nodes}


def test_security_group_rules(stack):
    region, run = stack
    for r in run.of_type(SG_RULE):
        assert r.inputs["direction"] == "ingress" and r.inputs["ethertype"] == "IPv4"
        assert r.inputs.get("portRangeMin") == r.inputs.get("portRangeMax")
    # Peers in this region through their group (one rule), the others' by /32.
    local_galera, local_proxies, local_keystone = (f"sg-{role}-{region}-id" for role in ("galera", "proxy", "keystone"))
    galera_peers = _hosts(n for n in TOPO.nodes(role="galera") if n.region != region) | {local_galera}
    monitoring = TOPO.monitoring.cidr  # Prometheus: the exporters, from this network only
    # Every group: SSH from the admin network, node_exporter from the monitoring network.
    admin = {("tcp", 22, TOPO.admin_cidr), ("tcp", 9100, monitoring)}

    galera = _rules(run, region, "galera")
    # every region's database frontend may fail over here
    all_proxies = _hosts(n for n in TOPO.nodes(role="proxy") if n.region != region) | {local_proxies}
    assert len(galera_peers) == 7 and len(all_proxies) == 5
    assert galera == admin | {("tcp", 3306, p) for p in galera_peers | all_proxies} \
        | {(proto, 4567, p) for proto in ("tcp", "udp") for p in galera_peers} \
        | {("tcp", 4568, p) for p in galera_peers} | {("tcp", 4444, p) for p in galera_peers} \
        | {("tcp", 9200, p) for p in all_proxies} | {("tcp", 9104, monitoring)}
    assert _rules(run, region, "keystone") == admin | {("tcp", 5000, local_proxies)}
    assert _rules(run, region, "memcached") == admin | {("tcp", 11211, local_keystone),
                                                        ("tcp", 11211, f"sg-memcached-{region}-id")}
    assert _rules(run, region, "proxy") == admin | {("tcp", 443, "0.0.0.0/0")} \
        | {("tcp", 5000, TOPO.region(region).cidr)} | {("tcp", 3306, local_keystone)} \
        | {("112", None, local_proxies)} | {("tcp", 8405, monitoring)}
    # Nothing but HTTPS on the proxies is open to the world.
    world = [r for r in run.of_type(SG_RULE) if r.inputs.get("remoteIpPrefix") in ("0.0.0.0/0", "::/0")]
    assert [(w.inputs["securityGroupId"], w.inputs["portRangeMin"]) for w in world] == [(f"sg-proxy-{region}-id", 443)]


def test_group_members_are_the_ports_in_the_group(stack):
    """A remote-group rule admits the addresses of the group's ports: the lab enforces it
    with security.group_members, which must be what the stack puts in each group."""
    region, run = stack
    members: dict[str, set] = {}
    for port in run.of_type(PORT):
        addresses = {ip["ipAddress"] for ip in port.inputs["fixedIps"]}
        addresses |= {pair["ipAddress"] for pair in port.inputs.get("allowedAddressPairs") or []}
        for group in port.inputs["securityGroupIds"]:
            members.setdefault(group, set()).update(addresses)
    assert members == {f"sg-{role}-{region}-id": set(group_members(TOPO, region, role))
                       for role in security_groups(TOPO, region)}


def test_fixed_addresses_and_server_groups(stack):
    region, run = stack
    for node in TOPO.nodes(region):
        port = run.named(f"port-{node.name}")
        assert port.inputs["fixedIps"] == [{"subnetId": f"subnet-{region}-id", "ipAddress": node.address}]
        assert port.inputs["networkId"] == f"net-{region}-id"
        assert port.inputs["securityGroupIds"] == [f"sg-{node.role}-{region}-id"]
        instance = run.named(f"instance-{node.name}")
        assert instance.inputs["networks"] == [{"port": f"port-{node.name}-id"}]
        assert instance.inputs["schedulerHints"] == [{"group": f"servergroup-{node.role}-{region}-id"}]
        assert instance.inputs["flavorName"] == node.flavor
    groups = run.of_type("openstack:compute/serverGroup:ServerGroup")
    assert sorted(g.name for g in groups) == sorted(f"servergroup-{role}-{region}"
                                                    for role in ("proxy", "galera", "keystone", "memcached"))
    assert all(g.inputs["policies"] == "anti-affinity" for g in groups)
    # Every instance of the stack is in the anti-affinity group of its role.
    for instance in run.of_type(INSTANCE):
        role = instance.inputs["metadata"]["keystone-multiregion-role"]
        assert instance.inputs["schedulerHints"] == [{"group": f"servergroup-{role}-{region}-id"}]
    assert len(run.of_type(INSTANCE)) == len(TOPO.nodes(region))


def test_network_subnet_router(stack):
    region, run = stack
    r = TOPO.region(region)
    subnet = run.named(f"subnet-{region}")
    assert subnet.inputs["cidr"] == r.cidr and subnet.inputs["gatewayIp"] == r.gateway
    start, end = TOPO.dhcp_pool(region)
    assert subnet.inputs["allocationPools"] == [{"start": start, "end": end}]
    router = run.named(f"router-{region}")
    assert router.inputs["externalNetworkId"] == "extnet-id-public"
    assert run.named(f"router-if-{region}").inputs == {"routerId": f"router-{region}-id",
                                                       "subnetId": f"subnet-{region}-id"}
    # Every cloud resource goes through this region's explicit provider; the catalog's
    # through the region's own Keystone as admin.
    provider = run.named(f"openstack-{region}")
    assert provider.inputs["region"] == region
    for res in run.resources:
        if res.type.startswith("openstack:"):
            expected = f"::keystone-admin-{region}::" if res.type.startswith("openstack:identity") \
                else f"::openstack-{region}::"
            assert res.provider.startswith(f"urn:pulumi:{region}::keystone-multiregion::") and expected in res.provider


def test_galera_volumes_are_protected_and_attached_at_boot(stack):
    region, run = stack
    volumes = run.of_type("openstack:blockstorage/volume:Volume")
    assert sorted(v.name for v in volumes) == sorted(f"volume-{n.name}" for n in TOPO.nodes(region, "galera"))
    for node in TOPO.nodes(region, "galera"):
        volume = run.named(f"volume-{node.name}")
        assert volume.inputs["size"] == 20
        assert volume.protect is True and volume.retain_on_delete is True
        instance = run.named(f"instance-{node.name}")
        assert instance.inputs["blockDevices"] == [
            {"sourceType": "image", "destinationType": "local", "uuid": "image-id-debian-12", "bootIndex": 0,
             "deleteOnTermination": True},
            {"sourceType": "volume", "destinationType": "volume", "uuid": f"volume-{node.name}-id",
             "bootIndex": -1, "deleteOnTermination": False},
        ]
        assert "imageId" not in instance.inputs
        # Stateful: a changed template or image never rebuilds a database node.
        assert set(instance.ignore_changes) >= {"userData", "imageId", "blockDevices"}
        assert instance.delete_before_replace is False
        assert instance.inputs["stopBeforeDestroy"] is True


def test_stateless_nodes_release_their_fixed_port_before_replacement(stack):
    region, run = stack
    for role in ("keystone", "memcached", "proxy"):
        for node in TOPO.nodes(region, role):
            instance = run.named(f"instance-{node.name}")
            assert instance.delete_before_replace is True
            # Files are pushed (files-<node>), never a rebuild; a new image does replace it.
            assert instance.ignore_changes == ["userData"]
            assert instance.inputs["imageId"] == "image-id-debian-12"


def test_vips_are_reserved_ports_with_address_pairs_and_floating_ips(stack):
    region, run = stack
    vips = TOPO.vips(region)
    for node in TOPO.nodes(region, "proxy"):
        port = run.named(f"port-{node.name}")
        assert port.inputs["allowedAddressPairs"] == [{"ipAddress": v.address} for v in vips]
    for node in TOPO.nodes(region):
        if node.role != "proxy":
            assert "allowedAddressPairs" not in run.named(f"port-{node.name}").inputs
    for vip in vips:
        port = run.named(f"port-{vip.name}")
        assert port.inputs["fixedIps"] == [{"subnetId": f"subnet-{region}-id", "ipAddress": vip.address}]
        assert port.inputs["securityGroupIds"] == [f"sg-proxy-{region}-id"]
        assert "deviceId" not in port.inputs
    public = [v for v in vips if v.kind == "public"]
    fips = run.of_type("openstack:networking/floatingIp:FloatingIp")
    assert sorted(f.name for f in fips) == sorted(f"fip-{v.name}" for v in public)
    assert all(f.inputs["pool"] == "public" for f in fips)
    for vip in public:
        assoc = run.named(f"fip-assoc-{vip.name}")
        assert assoc.inputs["portId"] == f"port-{vip.name}-id"
        assert assoc.inputs["fixedIp"] == vip.address
        assert assoc.inputs["floatingIp"].startswith("203.0.113.")
    assert not any(f"fip-{v.name}" == f.name for v in vips if v.kind == "internal" for f in fips)


def test_user_data_is_exactly_the_rendered_document(stack):
    region, run = stack
    for node in TOPO.nodes(region):
        instance = run.named(f"instance-{node.name}")
        expected = render_node(TOPO, node.name, mock_node_secrets(node.name, region))
        # What Nova gets: the rendered document, gzip-compressed and base64-encoded.
        assert instance.inputs["userData"] == expected.encoded_user_data
        assert decode_user_data(instance.inputs["userData"]) == expected.user_data
        assert ("userData" in instance.secret_inputs) is expected.secret
    galera = run.named(f"instance-galera-{region}-1")
    assert "userData" in galera.secret_inputs
    assert MOCK_SECRETS["galera_root_password"] in decode_user_data(galera.inputs["userData"])
    assert f"mock-private-key-tls-key-galera-{region}-1" in decode_user_data(galera.inputs["userData"])


def test_galera_nodes_get_certificates_from_the_shared_ca(stack):
    region, run = stack
    for node in TOPO.nodes(region, "galera"):
        csr = run.named(f"tls-csr-{node.name}")
        assert csr.inputs["ipAddresses"] == [node.address]  # the SST donor checks the joiner's IP
        assert csr.inputs["privateKeyPem"] == f"mock-private-key-tls-key-{node.name}\n"
        cert = run.named(f"tls-cert-{node.name}")
        assert cert.inputs["caPrivateKeyPem"] == MOCK_CA_KEY
        assert cert.inputs["caCertPem"] == MOCK_SECRETS["galera_ca_cert"]
        assert cert.inputs["certRequestPem"] == f"mock-csr-tls-csr-{node.name}\n"
        assert {"server_auth", "client_auth"} <= set(cert.inputs["allowedUses"])
    keys = run.of_type("tls:index/privateKey:PrivateKey")
    assert sorted(k.name for k in keys) == sorted([f"tls-key-{n.name}" for n in TOPO.nodes(region, "galera")]
                                                  + [f"ssh-host-{n.name}" for n in TOPO.nodes(region)]
                                                  + [f"public-key-{region}"])


def test_public_endpoint_gets_a_development_certificate_when_the_stack_allows_it(stack):
    region, run = stack
    assert stack_config(ROOT, [s for s, r in REGION_STACKS.items() if r == region][0]) == {
        "region": region, "allowDevelopmentCertificate": True}
    csr = run.named(f"public-csr-{region}")
    assert csr.inputs["dnsNames"] == [TOPO.region(region).public_hostname]
    assert csr.inputs["ipAddresses"] == [v.address for v in TOPO.vips(region)]
    cert = run.named(f"public-cert-{region}")
    assert "server_auth" in cert.inputs["allowedUses"]
    # Signed by the shared development CA, which every region's proxies trust.
    assert cert.inputs["caPrivateKeyPem"] == MOCK_PUBLIC_DEV_CA_KEY
    assert cert.inputs["caCertPem"] == MOCK_SECRETS["public_ca_cert"]
    assert "peer-ca.pem" in decode_user_data(run.named(f"instance-proxy-{region}-1").inputs["userData"])
    proxy = run.named(f"instance-proxy-{region}-1")
    assert f"mock-private-key-public-key-{region}" in decode_user_data(proxy.inputs["userData"])
    assert "userData" in proxy.secret_inputs


def test_without_a_certificate_or_the_development_flag_nothing_is_created():
    with pytest.raises(Exception) as info:
        run_program("region-b", {"region": "region-b"}, dev_certificate=False)
    assert str(info.value).strip() == (
        "config: keystone-multiregion:publicCertificate is not set; the public endpoint identity.region-b.example.com "
        "needs a certificate: run `pulumi config set publicCertificate < chain.pem` and `pulumi config set --secret "
        "publicKey < key.pem`, or, for a development stack only, `pulumi config set allowDevelopmentCertificate "
        "true` (a certificate from the shared stack's development CA, whose key every such region then holds)")
    assert last_registered() == []  # not even the StackReference that would read the CA's key


@pytest.mark.parametrize("given", ["publicCertificate", "publicKey"])
def test_half_a_public_certificate_is_refused(given):
    """Half a certificate used to fall back to the development one silently."""
    missing = {"publicCertificate": "publicKey", "publicKey": "publicCertificate"}[given]
    with pytest.raises(Exception) as info:
        run_program("region-b", {"region": "region-b", given: "REAL"})  # even where development ones are allowed
    assert f"config: keystone-multiregion:{missing} is not set but {given} is;" in str(info.value)
    assert last_registered() == []


def test_shared_stack_exports_the_development_ca_key_only_when_allowed():
    allowed = run_program("shared", {"shared": True})
    assert "public_dev_ca_key" in allowed.exports
    production = run_program("shared", {"shared": True}, dev_certificate=False)
    assert "public_dev_ca_key" not in production.exports and "secrets" in production.exports


def test_development_certificate_needs_the_shared_stack_to_allow_it_too():
    shared = {"secrets": dict(MOCK_SECRETS), "galera_ca_key": MOCK_CA_KEY}  # a production shared stack
    with pytest.raises(Exception) as info:
        run_program("region-a", {"region": "region-a"}, shared_outputs=shared)
    assert ("acme/keystone-multiregion/shared exports no public_dev_ca_key, which allowDevelopmentCertificate "
            "needs: run `pulumi config set allowDevelopmentCertificate true -s shared`") in str(info.value)


def test_public_certificate_from_config(tmp_path):
    # A real certificate needs no flag, and the region never reads the development CA's key.
    run = run_program("region-c", {"region": "region-c", "publicCertificate": "REAL-CERT", "publicKey": "REAL-KEY"},
                      dev_certificate=False)
    assert not [r.name for r in run.resources if r.name.startswith("public-")]
    assert not [r.name for r in run.resources if MOCK_PUBLIC_DEV_CA_KEY in repr(r.inputs)]
    assert run.of_type("tls:index/locallySignedCert:LocallySignedCert") == [
        r for r in run.of_type("tls:index/locallySignedCert:LocallySignedCert") if r.name.startswith("tls-cert-")]
    # A real certificate: the other regions are verified through the system's CAs.
    shared = {k: v for k, v in MOCK_SECRETS.items() if k != "public_ca_cert"}
    host_key = mock_node_secrets("proxy-region-c-2", "region-c")["ssh_host_keys"]
    expected = render_node(TOPO, "proxy-region-c-2",
                           {**shared, "public_tls": {"region-c": {"cert": "REAL-CERT", "key": "REAL-KEY"}},
                            "ssh_host_keys": host_key})
    assert decode_user_data(run.named("instance-proxy-region-c-2").inputs["userData"]) == expected.user_data


def test_components_are_named_from_the_topology_and_nested(stack):
    region, run = stack
    top = run.named(region)
    assert top.type == "keystone-multiregion:region:Region"
    for name, typ in [(f"network-{region}", "keystone-multiregion:network:RegionNetwork"),
                      (f"security-{region}", "keystone-multiregion:security:SecurityGroups"),
                      (f"vips-{region}", "keystone-multiregion:proxy:Vips"),
                      (f"galera-{region}", "keystone-multiregion:nodes:NodeGroup")]:
        component = run.named(name)
        assert component.type == typ
        assert component.parent.endswith(f"keystone-multiregion:region:Region::{region}")
    assert run.named(f"volume-galera-{region}-1").parent.endswith(f"keystone-multiregion:nodes:NodeGroup::galera-{region}")
    ref = run.of_type("pulumi:pulumi:StackReference")
    assert [r.name for r in ref] == ["acme/keystone-multiregion/shared"]
    assert ref[0].read is True


def test_shared_stack_generates_every_secret_once():
    run = run_program("shared", stack_config(ROOT, "shared"))
    passwords = run.of_type("random:index/randomPassword:RandomPassword")
    assert sorted(p.name for p in passwords) == sorted(s.replace("_", "-") for s in SECRETS)
    for p in passwords:
        assert p.protect is True
        assert p.inputs["length"] == SECRETS[p.name.replace("-", "_")][0] and p.inputs["special"] is False
        assert p.inputs["length"] >= (8 if p.name == "vrrp-password" else 32)
    assert not [r for r in run.resources if r.type.startswith("openstack:")]
    keys = run.of_type("random:index/randomBytes:RandomBytes")
    assert sorted(k.name for k in keys) == ["credential-keys-0", "credential-keys-1", "fernet-keys-0", "fernet-keys-1"]
    assert all(k.inputs["length"] == 32 and k.protect for k in keys)
    ca = run.named("galera-ca")
    assert ca.inputs["isCaCertificate"] is True
    assert ca.inputs["subject"] == {"commonName": "keystone Galera CA"}
    # The CAs' keys are protected; their certificates are renewed (test_certificates.py).
    assert run.named("galera-ca-key").protect is True
    assert run.named("public-dev-ca").inputs["isCaCertificate"] is True and run.named("public-dev-ca-key").protect


def _bad_run(tmp_path, config, topology=None):
    if topology is not None:
        path = tmp_path / "topology.yaml"
        path.write_text(yaml.safe_dump(topology))
        config = {**config, "topology": str(path)}
    with pytest.raises(Exception) as info:
        run_program("region-a", config)
    return info


def test_unknown_region_fails_before_any_resource(tmp_path):
    info = _bad_run(tmp_path, {"region": "region-d"})
    assert "region 'region-d' is not in the topology (regions: region-a, region-b, region-c)" in str(info.value)


def test_broken_topology_fails_before_any_resource(tmp_path):
    data = example()
    data["regions"][2]["roles"] = {"galera": {"count": 2}}
    info = _bad_run(tmp_path, {"region": "region-a"}, data)
    assert "8 Galera nodes make 8 voters, an even number" in str(info.value)


def test_stack_without_region_says_how_to_fix_it(tmp_path):
    info = _bad_run(tmp_path, {})
    assert "keystone-multiregion:region is not set; run `pulumi config set region <name>`" in str(info.value)


def test_missing_shared_secret_names_it(tmp_path):
    partial = {k: v for k, v in MOCK_SECRETS.items() if k != "galera_root_password"}
    with pytest.raises(Exception) as info:
        run_program("region-b", {"region": "region-b"},
                    shared_outputs={"secrets": partial, "galera_ca_key": MOCK_CA_KEY,
                                    "public_dev_ca_key": MOCK_PUBLIC_DEV_CA_KEY})
    assert "galera_root_password is missing or empty" in str(info.value)


def test_existing_network_is_used_instead_of_creating_one(tmp_path):
    data = example()
    data["regions"][1]["existing_network"] = {"network_id": "net-given", "subnet_id": "subnet-given"}
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    run = run_program("region-b", {"region": "region-b", "topology": str(path)})
    for typ in ("network/network:Network", "subnet:Subnet", "router:Router", "routerInterface:RouterInterface"):
        assert run.of_type(f"openstack:networking/{typ}") == []
    port = run.named("port-galera-region-b-1")
    assert port.inputs["networkId"] == "net-given"
    assert port.inputs["fixedIps"] == [{"subnetId": "subnet-given", "ipAddress": "10.10.2.42"}]
    assert run.named("port-vip-region-b-public-1").inputs["networkId"] == "net-given"


def test_dns_zone_in_the_topology_publishes_the_public_name(tmp_path):
    """With `dns:`, each region stack manages its public name's A records in Designate: both
    public floating IPs (round-robin), nothing else; without it, no DNS resource at all."""
    data = example()
    data["dns"] = {"zone": "example.com", "ttl": 120}
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    run = run_program("region-b", {"region": "region-b", "topology": str(path)})
    records = run.of_type("openstack:dns/recordSet:RecordSet")
    assert [(r.name, r.inputs["name"], r.inputs["type"], r.inputs["ttl"], r.inputs["zoneId"]) for r in records] == [
        ("dns-region-b", "identity.region-b.example.com.", "A", 120, "zone-id-example.com.")]
    fips = [run.named(f"fip-assoc-{v.name}").inputs["floatingIp"] for v in TOPO.vips("region-b", "public")]
    assert len(set(fips)) == 2 and records[0].inputs["records"] == fips
    assert ("openstack:dns/getDnsZone:getDnsZone", {"name": "example.com."}) in run.calls
    assert run.of_type("openstack:dns/recordSet:RecordSet") and \
        run_program("region-b", {"region": "region-b"}).of_type("openstack:dns/recordSet:RecordSet") == []


def test_witness_stack_runs_only_the_arbitrator(tmp_path):
    from test_topology import two_regions_and_a_witness
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(two_regions_and_a_witness()))
    run = run_program("witness", {"region": "witness", "topology": str(path)})  # its files are pushed too
    instances = run.of_type(INSTANCE)
    assert [i.name for i in instances] == ["instance-arbitrator-witness-1"]
    garbd = instances[0]
    assert "GALERA_NODES=" in decode_user_data(garbd.inputs["userData"]) and "userData" in garbd.secret_inputs
    assert set(garbd.ignore_changes) >= {"userData", "imageId"}  # stateful role: a voter
    assert run.of_type("openstack:networking/floatingIp:FloatingIp") == []
    groups = run.of_type("openstack:networking/secGroup:SecGroup")
    assert [g.name for g in groups] == ["sg-arbitrator-witness"]
    assert run.named("tls-csr-arbitrator-witness-1").inputs["ipAddresses"] == ["10.10.9.90"]
    # A witness holds no data, so no backups: the data regions have containers, it has none.
    assert run.of_type(CONTAINER) == [] and "backup_container" not in run.exports


def test_catalog_registers_only_this_regions_unversioned_endpoints(stack):
    region, run = stack
    internal = TOPO.vips(region, "internal")[0].address
    endpoints = run.of_type("openstack:identity/endpointV3:EndpointV3")
    assert {(e.inputs["interface"], e.inputs["url"], e.inputs["endpointRegion"]) for e in endpoints} == {
        ("public", f"https://{TOPO.region(region).public_hostname}", region),
        ("internal", f"http://{internal}:5000", region),
        ("admin", f"http://{internal}:5000", region)}
    services = run.of_type("openstack:identity/serviceV3:ServiceV3")
    if region == TOPO.bootstrap_region:
        assert [(s.inputs["name"], s.inputs["type"], s.protect) for s in services] == [("keystone", "identity", True)]
        assert all(e.inputs["serviceId"] == "identity-service-id" for e in endpoints)
    else:
        assert services == []  # the identity service exists once; this region finds it
        assert ("openstack:identity/getService:getService", {"name": "keystone", "type": "identity"}) in run.calls
    admin = run.named(f"keystone-admin-{region}")
    assert admin.inputs["authUrl"] == f"https://{TOPO.region(region).public_hostname}/v3"
    assert admin.inputs["userName"] == "admin" and admin.inputs["password"] == MOCK_SECRETS["keystone_admin_password"]
    assert "password" in admin.secret_inputs
    # Nothing is registered before the region's Keystone answers.
    gate = run.named(f"keystone-ready-{region}")
    assert gate.type == "pulumi-python:dynamic:Resource"
    assert gate.inputs["url"] == f"https://{TOPO.region(region).public_hostname}"
    for endpoint in endpoints + services:
        assert any(d.endswith(f"::keystone-ready-{region}") for d in endpoint.dependencies), endpoint.name
    catalog_region = run.named(f"catalog-region-{region}")
    assert catalog_region.inputs["region_id"] == region
    assert "admin_password" in catalog_region.secret_inputs


def test_catalog_resources_are_exactly_catalog_entries(stack):
    """The stack registers what keystone_multiregion.roles.keystone.catalog_entries says, the
    function the lab registers through Keystone's API (lab/catalog.py): they cannot disagree."""
    from keystone_multiregion.roles.keystone import catalog_entries
    region, run = stack
    want = catalog_entries(TOPO, region)
    endpoints = run.of_type("openstack:identity/endpointV3:EndpointV3")
    assert sorted((e.inputs["interface"], e.inputs["endpointRegion"], e.inputs["url"]) for e in endpoints) == \
        sorted((e["interface"], e["region"], e["url"]) for e in want["endpoints"])
    assert {e.inputs["name"] for e in endpoints} == {want["service"]["name"]}
    catalog_region = run.named(f"catalog-region-{region}")
    assert (catalog_region.inputs["region_id"], catalog_region.inputs["description"]) == \
        (want["region"]["id"], want["region"]["description"])
    for service in run.of_type("openstack:identity/serviceV3:ServiceV3"):
        assert {k: service.inputs[k] for k in want["service"]} == want["service"]


def test_fernet_rotation_in_the_shared_stack():
    run = run_program("shared", {"shared": True, "fernetRotations": 2})
    fernet = sorted(r.name for r in run.of_type("random:index/randomBytes:RandomBytes") if r.name.startswith("fernet"))
    assert fernet == ["fernet-keys-0", "fernet-keys-1", "fernet-keys-2", "fernet-keys-3"]
    credential = [r.name for r in run.of_type("random:index/randomBytes:RandomBytes") if r.name.startswith("credential")]
    assert sorted(credential) == ["credential-keys-0", "credential-keys-1"]  # rotated on their own
    run = run_program("shared", {"shared": True, "credentialRotations": 1})
    credential = [r.name for r in run.of_type("random:index/randomBytes:RandomBytes") if r.name.startswith("credential")]
    assert sorted(credential) == ["credential-keys-0", "credential-keys-1", "credential-keys-2"]
    fernet = [r.name for r in run.of_type("random:index/randomBytes:RandomBytes") if r.name.startswith("fernet")]
    assert sorted(fernet) == ["fernet-keys-0", "fernet-keys-1"]


COMMAND = "command:remote:Command"


def test_keys_are_pushed_to_every_keystone_node_over_pinned_ssh(stack):
    from keystone_multiregion.keys import payload
    from keystone_multiregion.roles.keystone import install_keys_command
    from pulumi_harness import MOCK_SSH_KEY
    region, run = stack
    commands = [c for c in run.of_type(COMMAND) if c.name.startswith("keys-")]
    nodes = TOPO.nodes(region, "keystone")
    assert sorted(c.name for c in commands) == sorted(f"keys-{n.name}" for n in nodes)
    repos = {r: MOCK_SECRETS[r] for r in ("fernet_keys", "credential_keys")}
    for node in nodes:
        cmd = run.named(f"keys-{node.name}")
        assert cmd.inputs["create"] == cmd.inputs["update"] == install_keys_command()
        assert cmd.inputs["stdin"] == payload(repos) and "stdin" in cmd.secret_inputs
        conn = cmd.inputs["connection"]
        assert conn["host"] == node.address and conn["user"] == "debian"
        assert conn["privateKey"] == MOCK_SSH_KEY and "connection" in cmd.secret_inputs
        # The host key is the one the node's cloud-init installs: no trust on first use.
        assert conn["hostKey"] == f"ssh-ed25519 mock-ssh-host-{node.name}"
        instance = run.named(f"instance-{node.name}")
        assert f"ssh-ed25519 mock-ssh-host-{node.name}" in decode_user_data(instance.inputs["userData"])
        assert cmd.inputs["triggers"] == [f"instance-{node.name}-id"]  # a new VM gets the keys again
        for key in list(repos["fernet_keys"].values()) + list(repos["credential_keys"].values()):
            assert key not in decode_user_data(instance.inputs["userData"])
    # The catalog (and its readiness gate) waits for every push.
    catalog = run.named(f"catalog-{region}")
    assert {f"keys-{n.name}" for n in nodes} <= {d.rsplit("::", 1)[1] for d in catalog.dependencies}


def test_a_rotation_changes_what_is_pushed_and_no_cloud_init(tmp_path):
    from keystone_multiregion.keys import repository
    base = {"secrets": dict(MOCK_SECRETS), "galera_ca_key": MOCK_CA_KEY, "public_dev_ca_key": MOCK_PUBLIC_DEV_CA_KEY}
    keys = ["k0", "k1", "k2"]
    before = run_program("region-b", {"region": "region-b"},
                         shared_outputs={**base, "secrets": {**MOCK_SECRETS, "fernet_keys": repository(keys, 0, 5)}})
    after = run_program("region-b", {"region": "region-b"},
                        shared_outputs={**base, "secrets": {**MOCK_SECRETS, "fernet_keys": repository(keys, 1, 5)}})
    for node in TOPO.nodes("region-b"):
        assert before.named(f"instance-{node.name}").inputs == after.named(f"instance-{node.name}").inputs
    for node in TOPO.nodes("region-b", "keystone"):
        assert before.named(f"keys-{node.name}").inputs["stdin"] != after.named(f"keys-{node.name}").inputs["stdin"]


def test_a_node_holding_other_keys_after_the_push_fails_the_update():
    with pytest.raises(Exception) as info:
        run_program("region-c", {"region": "region-c"}, drifted=("keys-keystone-region-c-2",))
    assert "keystone-region-c-2: after the push its key repositories are" in str(info.value)
    assert "keystone-region-c-1" not in str(info.value)


def test_missing_ssh_key_fails_before_any_resource_and_says_how_to_fix_it():
    with pytest.raises(Exception) as info:
        run_program("region-a", {"region": "region-a"}, ssh_key=None)
    assert ("config: keystone-multiregion:sshPrivateKey is not set; this region's nodes receive their files "
            "(and the Keystone nodes the Fernet and credential keys) over SSH") in str(info.value)
    assert "with the private key of the key pair 'ops'" in str(info.value)


def test_keys_go_through_the_configured_bastion():
    run = run_program("region-a", {"region": "region-a", "sshUser": "ubuntu", "sshBastion": "198.51.100.7",
                                   "sshBastionUser": "jump", "sshBastionHostKey": "ssh-ed25519 BASTION"})
    conn = run.named("keys-keystone-region-a-1").inputs["connection"]
    assert conn["user"] == "ubuntu"
    proxy = {k: conn["proxy"][k] for k in ("host", "user", "port", "privateKey", "hostKey")}
    assert proxy == {"host": "198.51.100.7", "user": "jump", "port": 22.0,
                     "privateKey": "mock-ssh-private-key\n", "hostKey": "ssh-ed25519 BASTION"}


def test_keystone_nodes_without_a_login_key_pair_fail_before_any_resource(tmp_path):
    data = example()
    data["defaults"].pop("key_pair", None)
    info = _bad_run(tmp_path, {"region": "region-a"}, data)
    assert "topology: defaults.key_pair is not set; this region's nodes receive their files over SSH" \
        in str(info.value)


def _deps(resource) -> set[str]:
    return {d.rsplit("::", 1)[1] for d in resource.dependencies}


def test_every_nodes_files_are_pushed_one_node_of_a_role_at_a_time(stack):
    """files-<node> runs node-agent apply over pinned SSH with the node's rendered files on
    stdin (a secret); within a role, node n's VM and push wait for node n-1's push, which
    ends only once node n-1 is healthy again; a Keystone node's files wait for its keys."""
    from keystone_multiregion import push
    region, run = stack
    for role in ("proxy", "galera", "keystone", "memcached"):
        nodes = TOPO.nodes(region, role)
        for i, node in enumerate(nodes):
            cmd = run.named(f"files-{node.name}")
            assert cmd.inputs["create"] == cmd.inputs["update"] == push.apply_command()
            expected = push.encode(push.payload(TOPO, render_node(TOPO, node.name, mock_node_secrets(node.name, region))))
            assert cmd.inputs["stdin"] == expected and "stdin" in cmd.secret_inputs
            assert cmd.inputs["connection"]["host"] == node.address
            assert cmd.inputs["connection"]["hostKey"] == f"ssh-ed25519 mock-ssh-host-{node.name}"
            assert cmd.inputs["triggers"] == [f"instance-{node.name}-id"]  # a new VM gets its files again
            deps = _deps(cmd)
            if i:
                assert f"files-{nodes[i - 1].name}" in deps
                assert f"files-{nodes[i - 1].name}" in _deps(run.named(f"instance-{node.name}"))
            else:
                assert not [d for d in deps if d.startswith("files-")]
            assert not [d for d in deps if d.startswith("files-") and d != f"files-{nodes[i - 1].name}"]
            if role == "keystone":
                assert f"keys-{node.name}" in deps


def test_a_node_that_applied_other_files_fails_the_update():
    with pytest.raises(Exception) as info:
        run_program("region-c", {"region": "region-c"}, drifted=("files-proxy-region-c-2",))
    assert "proxy-region-c-2: after the push its files differ from what the stack pushed: " in str(info.value)
    assert "node-agent check" in str(info.value)


def test_galera_members_leave_the_cluster_before_their_vm_goes_the_last_first(stack):
    """leave-<node> does nothing on create or update; on delete (the node or its region gone
    from the topology) it runs node-agent leave over the same pinned SSH. It depends on the
    node's push and on the previous member's leave, so Pulumi, deleting dependents first,
    takes the members out the last first and never two together. Stateless roles have none."""
    from keystone_multiregion import push
    region, run = stack
    leaving = [n for n in TOPO.nodes(region) if n.role in ("galera", "arbitrator")]
    assert leaving, region
    for i, node in enumerate(leaving):
        cmd = run.named(f"leave-{node.name}")
        assert cmd.inputs["delete"] == push.leave_command()
        assert not cmd.inputs.get("create") and not cmd.inputs.get("update")
        assert cmd.inputs["connection"]["host"] == node.address
        assert cmd.inputs["connection"]["hostKey"] == f"ssh-ed25519 mock-ssh-host-{node.name}"
        deps = _deps(cmd)
        assert f"files-{node.name}" in deps
        before = {d for d in deps if d.startswith("leave-")}
        assert before == ({f"leave-{leaving[i - 1].name}"} if i else set())
    stateless = {n.name for n in TOPO.nodes(region) if n.role not in ("galera", "arbitrator")}
    assert not [r for r in run.resources if r.name.startswith("leave-") and r.name[6:] in stateless]


# --- backups (topology `backup:`) ------------------------------------------------------------------

CONTAINER = "openstack:objectstorage/container:Container"


def _export(run, name):
    from pulumi.runtime.sync_await import _sync_await
    return _sync_await(run.exports[name].future())


def _backup_values():
    """The backup key and the object store's credentials: what must never be in user_data."""
    return [MOCK_SECRETS["backup_key"], *MOCK_SECRETS["backup_store"].values()]


def test_one_protected_backup_container_per_region(stack):
    """backup-<region>: named backup.container(region), in the region's cloud region through
    the region's provider, protected and retained (never deleted by `pulumi up` or `destroy`),
    never force-destroyed; the stack exports its name."""
    region, run = stack
    containers = run.of_type(CONTAINER)
    assert [c.name for c in containers] == [f"backup-{region}"]
    c = containers[0]
    assert c.inputs["name"] == TOPO.backup.container(region) == f"keystone-backups-{region}"
    assert c.inputs["region"] == TOPO.region(region).openstack_region
    assert c.inputs["forceDestroy"] is False
    assert c.protect is True and c.retain_on_delete is True
    assert f"::openstack-{region}::" in c.provider
    assert c.parent.endswith(f"keystone-multiregion:region:Region::{region}")
    assert _export(run, "backup_container") == TOPO.backup.container(region)


def test_backup_secrets_are_pushed_to_galera_nodes_and_never_in_user_data(stack):
    """The backup key and the store's credentials reach the Galera nodes only by the push
    (backup-secrets.json, 0600, push_only): never in any instance's user_data (which Nova
    keeps and serves to the VM's metadata clients), never pushed to another role."""
    import json
    from keystone_multiregion.roles.backup import BACKUP_SECRETS
    region, run = stack
    for instance in run.of_type(INSTANCE):
        leaked = [v for v in _backup_values() if v in decode_user_data(instance.inputs["userData"])]
        assert leaked == [], (instance.name, leaked)
        written = [f["path"] for f in yaml.safe_load(decode_user_data(instance.inputs["userData"]))["write_files"]]
        assert BACKUP_SECRETS not in written
    for node in TOPO.nodes(region):
        cmd = run.named(f"files-{node.name}")
        files = {f["path"]: f for f in json.loads(cmd.inputs["stdin"])["files"]}
        if node.role != "galera":
            assert BACKUP_SECRETS not in files
            assert not [v for v in _backup_values() if v in cmd.inputs["stdin"]], node.name
            continue
        assert "stdin" in cmd.secret_inputs
        pushed = files[BACKUP_SECRETS]
        assert pushed["mode"] == "0600"
        assert json.loads(pushed["content"]) == {"key": MOCK_SECRETS["backup_key"],
                                                 "store": MOCK_SECRETS["backup_store"]}


def test_shared_stack_exports_the_backup_key_and_the_store_credentials():
    run = run_program("shared", stack_config(ROOT, "shared"))
    assert run.named("backup-key").protect is True  # generated like every SECRETS entry
    secrets = _export(run, "secrets")
    assert secrets["backup_key"] == "random-backup-key"
    assert secrets["backup_store"] == MOCK_BACKUP_STORE  # the auth_version '3' fields, from backupStore
    from pulumi.runtime.sync_await import _sync_await
    assert _sync_await(run.exports["secrets"].is_secret())


V3_FIX = ("run `pulumi config set --secret --path 'backupStore.application_credential_id' "
          "<application_credential_id> -s shared` and `pulumi config set --secret --path "
          "'backupStore.application_credential_secret' <application_credential_secret> -s shared`")


@pytest.mark.parametrize("store, secret, problem", [
    (None, True, "is not set"),
    ({"application_credential_id": "id"}, True, "lacks application_credential_secret"),
    ({"application_credential_id": "id", "application_credential_secret": " "}, True,
     "lacks application_credential_secret"),
    ({"user": "u", "key": "k"}, True, "lacks application_credential_id, application_credential_secret"),
    ("plain-value", True, "is not a mapping of application_credential_id, application_credential_secret"),
    (MOCK_BACKUP_STORE, False, "is not a secret (its values would sit in clear text in Pulumi.shared.yaml)"),
], ids=["unset", "incomplete", "empty", "v1-fields", "not-a-mapping", "not-secret"])
def test_shared_stack_without_the_store_credentials_fails_before_any_resource(store, secret, problem):
    config = {"shared": True} if store is None else {"shared": True, "backupStore": store}
    with pytest.raises(Exception) as info:
        run_program("shared", config, backup_store=None,
                    secret_config=("sshPrivateKey", "backupStore") if secret else ("sshPrivateKey",))
    message = str(info.value).strip()
    assert message == (
        f"config: keystone-multiregion:backupStore {problem}; topology.yaml has backup: (store "
        "https://keystone.infra.example.com:5000/v3, auth_version '3'), whose credentials the Galera nodes receive "
        f"from the shared stack: {V3_FIX}")
    assert "\n" not in message and "plain-value" not in message  # one line, never the value itself
    assert last_registered() == []


def _topology_file(tmp_path, data):
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_swift_v1_store_takes_user_and_key(tmp_path):
    data = example()
    data["backup"]["store"].update(auth_url="https://swift.infra.example.com/auth/v1.0", auth_version="1")
    topology = _topology_file(tmp_path, data)
    run = run_program("shared", {"shared": True, "topology": topology,
                                 "backupStore": {"user": "acct:backup", "key": "v1-key", "extra": "ignored"}})
    assert _export(run, "secrets")["backup_store"] == {"user": "acct:backup", "key": "v1-key"}
    with pytest.raises(Exception) as info:  # the v3 credentials do not do for a v1 store
        run_program("shared", {"shared": True, "topology": topology})
    assert "backupStore lacks user, key;" in str(info.value)
    assert "`pulumi config set --secret --path 'backupStore.user' <user> -s shared`" in str(info.value)


def test_without_backup_in_the_topology_nothing_of_it_exists(tmp_path):
    import json
    from keystone_multiregion.roles.backup import BACKUP_SECRETS
    data = example()
    del data["backup"]
    topology = _topology_file(tmp_path, data)
    shared = run_program("shared", {"shared": True, "topology": topology}, backup_store=None)
    assert "backup_store" not in _export(shared, "secrets")
    secrets = {k: v for k, v in MOCK_SECRETS.items() if k not in ("backup_key", "backup_store")}
    run = run_program("region-b", {"region": "region-b", "topology": topology},
                      shared_outputs={"secrets": secrets, "galera_ca_key": MOCK_CA_KEY,
                                      "public_dev_ca_key": MOCK_PUBLIC_DEV_CA_KEY})
    assert run.of_type(CONTAINER) == [] and "backup_container" not in run.exports
    stdin = json.loads(run.named("files-galera-region-b-1").inputs["stdin"])
    assert BACKUP_SECRETS not in {f["path"] for f in stdin["files"]}


def test_region_stack_without_the_backup_secrets_names_them(tmp_path):
    """A shared stack from before the backups (no backup_key, no backup_store exported)."""
    secrets = {k: v for k, v in MOCK_SECRETS.items() if k != "backup_store"}
    with pytest.raises(Exception) as info:
        run_program("region-c", {"region": "region-c"},
                    shared_outputs={"secrets": secrets, "galera_ca_key": MOCK_CA_KEY,
                                    "public_dev_ca_key": MOCK_PUBLIC_DEV_CA_KEY})
    assert "backup_store is missing or incomplete" in str(info.value)
    assert "pulumi config set --secret --path 'backupStore.application_credential_id'" in str(info.value)


def test_replica_region_stack_runs_replicas_on_protected_volumes(tmp_path):
    from helpers import with_replica_region
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(with_replica_region()))
    run = run_program("region-r", {"region": "region-r", "topology": str(path)})
    names = sorted(i.name for i in run.of_type(INSTANCE))
    assert [n for n in names if "replica" in n or "galera" in n] == ["instance-replica-region-r-1",
                                                                     "instance-replica-region-r-2"]
    assert len(names) == 2 + 2 + 3 + 3  # replicas, proxies, keystone, memcached
    replica = run.named("instance-replica-region-r-1")
    assert replica.inputs["metadata"]["keystone-multiregion-role"] == "replica"
    assert "replica-node" in decode_user_data(replica.inputs["userData"]) and "userData" in replica.secret_inputs
    assert "wsrep" not in decode_user_data(replica.inputs["userData"]).split("99-keystone-multiregion.cnf")[1].split("path:")[0]
    assert set(replica.ignore_changes) >= {"userData"}  # stateful: a rebuild would have to seed again
    volumes = [v for v in run.of_type("openstack:blockstorage/volume:Volume")]
    assert sorted(v.name for v in volumes) == ["volume-replica-region-r-1", "volume-replica-region-r-2"]
    assert all(v.protect for v in volumes)
    assert run.named("tls-csr-replica-region-r-2").inputs["ipAddresses"] == ["10.10.7.43"]
    groups = sorted(g.name for g in run.of_type("openstack:networking/secGroup:SecGroup"))
    assert "sg-replica-region-r" in groups and "sg-galera-region-r" not in groups
    # No Galera member, so no backup container in a replica region.
    assert run.of_type(CONTAINER) == []
