"""The topology core: the good examples, and one clear error for each bad input."""

import ipaddress

import pytest
import yaml

from helpers import ROOT, example, five_regions
from keystone_multiregion.security import (ANYWHERE, PORTS, VRRP_PROTOCOL, group_members, project_usage,
                                           remote_prefixes, security_rules)
from keystone_multiregion.topology import TopologyError, load_topology, load_topology_file


def test_example_topology_nodes_and_addresses():
    topo = load_topology_file(ROOT / "topology.yaml")
    assert [r.name for r in topo.regions] == ["region-a", "region-b", "region-c"]
    assert topo.bootstrap_region == "region-a"
    assert topo.galera_voters == 9
    assert len(topo.nodes()) == 3 * (2 + 3 + 3 + 3)
    # Stable names and addresses from the region CIDR and the role's block.
    assert topo.node("galera-region-b-2").address == "10.10.2.43"
    assert topo.node("proxy-region-c-1").address == "10.10.3.26"
    assert topo.node("keystone-region-a-3").address == "10.10.1.60"
    assert topo.node("memcached-region-a-1").address == "10.10.1.74"
    # Every address is unique, inside its region, and outside the DHCP pool.
    addresses = [n.address for n in topo.nodes()] + [v.address for r in topo.regions for v in topo.vips(r.name)]
    assert len(addresses) == len(set(addresses))
    for r in topo.regions:
        start, end = topo.dhcp_pool(r.name)
        assert (start, end) == (str(r.network.network_address + 106), str(r.network.broadcast_address - 1))
        for n in topo.nodes(r.name):
            addr = ipaddress.ip_address(n.address)
            assert addr in r.network and addr < ipaddress.ip_address(start) and addr != ipaddress.ip_address(r.gateway)


def test_vips_rotate_masters_over_the_proxies():
    topo = load_topology(example())
    vips = topo.vips("region-a")
    assert [(v.name, v.kind, v.address, v.master) for v in vips] == [
        ("vip-region-a-public-1", "public", "10.10.1.10", "proxy-region-a-1"),
        ("vip-region-a-public-2", "public", "10.10.1.11", "proxy-region-a-2"),
        ("vip-region-a-internal-1", "internal", "10.10.1.12", "proxy-region-a-1"),
    ]
    assert len({v.vrid for v in vips}) == len(vips)


def test_adding_a_node_does_not_move_its_neighbours():
    before = load_topology(example())
    data = example()
    data["regions"][1]["roles"] = {"keystone": {"count": 5}}
    after = load_topology(data)
    for n in before.nodes():
        assert after.node(n.name).address == n.address
    assert after.node("keystone-region-b-5").address == "10.10.2.62"


def test_five_region_topology():
    topo = load_topology(five_regions())
    assert topo.galera_voters == 5
    assert [r.index for r in topo.regions] == [1, 2, 3, 4, 5]
    assert topo.node("galera-waw-1").address == "172.20.20.42"
    assert len(topo.nodes(role="keystone")) == 10
    # Each region's Galera group admits the five peers for replication, and nothing else:
    # the other regions' by /32, its own through the Galera group.
    rules = [r for r in security_rules(topo, "par") if r.group == "galera" and r.port == 4567 and r.protocol == "tcp"]
    assert {p for r in rules for p in remote_prefixes(topo, "par", r)} == \
        {f"{n.address}/32" for n in topo.nodes(role="galera")}
    assert [r.remote_group for r in rules if r.remote is None] == ["galera"]


def test_arbitrator_makes_an_even_layout_odd():
    data = five_regions()
    data["regions"] = data["regions"][:4]
    with pytest.raises(TopologyError, match="4 Galera nodes make 4 voters, an even number"):
        load_topology(data)
    data["arbitrator"] = {"region": "par"}
    topo = load_topology(data)
    assert topo.galera_voters == 5
    garbd = topo.node("arbitrator-par-1")
    assert garbd.address == "172.20.16.90"
    rules = security_rules(topo, "fra")
    assert f"{garbd.address}/32" in {r.remote for r in rules if r.group == "galera" and r.port == 4567}
    # SST and IST are between data nodes only: the arbitrator holds no data.
    assert f"{garbd.address}/32" not in {r.remote for r in rules if r.port in (4444, 4568)}


def test_security_rules_never_open_internal_ports_to_the_world():
    topo = load_topology(example())
    for region in topo.regions:
        for rule in security_rules(topo, region.name):
            if rule.remote == ANYWHERE:
                assert (rule.group, rule.protocol, rule.port) == ("proxy", "tcp", 443)
            if rule.port == 22:
                assert rule.remote == topo.admin_cidr
            if rule.protocol == VRRP_PROTOCOL:
                assert (rule.group, rule.remote, rule.remote_group) == ("proxy", None, "proxy")


@pytest.mark.parametrize("peer_rules", ["address", "cidr"])
def test_plain_http_keystone_stays_in_its_region(peer_rules):
    """tcp 5000 serves Keystone in clear text (the internal VIP, the Keystone nodes): only
    the region's own network may reach it, never another region's across the WAN."""
    for data in (example(), five_regions()):
        data["defaults"]["peer_rules"] = peer_rules
        topo = load_topology(data)
        for region in topo.regions:
            plain = [r for r in security_rules(topo, region.name) if r.port == PORTS["keystone"]]
            assert plain and {r.group for r in plain} == {"proxy", "keystone"}
            for rule in plain:
                for prefix in remote_prefixes(topo, region.name, rule):
                    assert ipaddress.ip_network(prefix).subnet_of(region.network), rule
            others = {r.cidr for r in topo.regions if r.name != region.name}
            assert not others & {r.remote for r in plain}


def test_cidr_peer_rules_are_one_per_region():
    data = example()
    data["defaults"]["peer_rules"] = "cidr"
    topo = load_topology(data)
    sst = [r.remote for r in security_rules(topo, "region-a") if r.port == 4444]
    assert sst == ["10.10.1.0/24", "10.10.2.0/24", "10.10.3.0/24"]


def _mutate(fn):
    data = example()
    fn(data)
    return data


BAD = [
    ("even voters",
     lambda d: d["regions"][0].update(roles={"galera": {"count": 2}}),
     "topology: regions[*].roles.galera.count: 8 Galera nodes make 8 voters, an even number: a split into two "
     "halves leaves no Primary component; add an arbitrator (arbitrator.region) or change a region's galera "
     "count by one"),
    ("even voters counting the arbitrator",
     lambda d: d.update(arbitrator={"region": "region-c"}),
     "topology: regions[*].roles.galera.count: 9 Galera nodes + 1 arbitrator make 10 voters, an even number: "
     "a split into two halves leaves no Primary component; remove the arbitrator or change a region's galera "
     "count by one"),
    ("one region holds half or more of the voters",
     lambda d: d["regions"][0].update(roles={"galera": {"count": 7}}),
     "topology: regions[0].roles.galera.count: region region-a holds 7 of 13 Galera voters: losing it would leave "
     "the others without quorum; add Galera nodes in other regions, or an arbitrator in another region"),
    ("overlapping CIDRs",
     lambda d: d["regions"][2].update(cidr="10.10.0.0/16"),
     "topology: regions[2].cidr: 10.10.0.0/16 overlaps regions[0].cidr 10.10.1.0/24; give every region its own "
     "non-overlapping range"),
    ("malformed CIDR",
     lambda d: d["regions"][1].update(cidr="10.10.2.0/33"),
     "topology: regions[1].cidr: '10.10.2.0/33' is not a valid CIDR; write an IPv4 network such as 10.10.1.0/24"),
    ("CIDR with host bits",
     lambda d: d["regions"][1].update(cidr="10.10.2.5/24"),
     "topology: regions[1].cidr: '10.10.2.5/24' has host bits set; write the network address, 10.10.2.0/24"),
    ("duplicate region names",
     lambda d: d["regions"][2].update(name="region-a"),
     "topology: regions[2].name: 'region-a' is also the name of regions[0]; give every region its own name"),
    ("duplicate region index",
     lambda d: d["regions"][2].update(index=2),
     "topology: regions[2].index: 2 is also the index of regions[1]; give every region its own index"),
    ("duplicate public host name",
     lambda d: d["regions"][1].update(public_hostname="identity.region-a.example.com"),
     "topology: regions[1].public_hostname: 'identity.region-a.example.com' is also the public_hostname of "
     "regions[0]; give every region its own endpoint name"),
    ("unknown bootstrap region",
     lambda d: d.update(bootstrap_region="region-x"),
     "topology: bootstrap_region: 'region-x' is not a region in this topology; set it to one of region-a, "
     "region-b, region-c"),
    ("one proxy",
     lambda d: d["regions"][1].update(roles={"proxy": {"count": 1}}),
     "topology: regions[1].roles.proxy.count: 1 is below the minimum of 2; set it to 2 or more (two proxies are "
     "needed so a VRRP address survives the loss of one)"),
    ("no keystone node",
     lambda d: d["regions"][0].update(roles={"keystone": {"count": 0}}),
     "topology: regions[0].roles.keystone.count: 0 is below the minimum of 1; set it to 1 or more (every region "
     "runs at least one keystone node)"),
    ("no memcached node, from defaults",
     lambda d: d["defaults"].update(memcached={"count": 0}),
     "topology: defaults.memcached.count: 0 is below the minimum of 1; set it to 1 or more (every region runs at "
     "least one memcached node)"),
    ("CIDR too small for the address plan",
     lambda d: d["regions"][0].update(cidr="10.10.1.0/26"),
     "topology: regions[0].cidr: 10.10.1.0/26 is too small: fixed addresses need offsets 10-105 plus 8 for DHCP; "
     "use a larger range (a /25 or bigger) or a smaller defaults.block_size"),
    ("role count larger than its address block",
     lambda d: d["regions"][2].update(roles={"keystone": {"count": 17}}),
     "topology: regions[2].roles.keystone.count: 17 nodes do not fit the address block of 16; lower the count "
     "or raise defaults.block_size"),
    ("unknown arbitrator region",
     lambda d: d.update(arbitrator={"region": "region-z"}),
     "topology: arbitrator.region: 'region-z' is not a region in this topology; set it to one of region-a, "
     "region-b, region-c"),
    ("SSH from anywhere",
     lambda d: d.update(admin_cidr="0.0.0.0/0"),
     "topology: admin_cidr: 0.0.0.0/0 opens SSH to the whole internet, more than an operator network (at most a "
     "/16 for IPv4, a /48 for IPv6); give the CIDR of your bastion or operator network, a /16 or smaller"),
    ("missing public host name",
     lambda d: d["regions"][1].pop("public_hostname"),
     "topology: regions[1].public_hostname: is missing; give the DNS name of the region's public endpoint"),
    ("misspelt setting",
     lambda d: d["regions"][0].update(cdir="10.0.0.0/24"),
     "topology: regions[0].cdir: is not a known setting; use one of cidr, existing_network, external_network, "
     "index, name, openstack_region, public_hostname, replica, roles, sources, witness"),
    ("project over the security group rule quota",
     lambda d: d.update(quotas={"security_group_rules": 60}),
     "topology: quotas.security_group_rules: region region-a needs 74 security group rules in its project (62 of "
     "its own, 12 that Neutron adds), above the quota of 60; raise the project's quota with `openstack "
     "--os-region-name region-a quota set --secgroup-rules 74 <project>` and set quotas.security_group_rules: 74 "
     "(or set defaults.peer_rules: cidr, one rule per region)"),
    ("project over the security group quota",
     lambda d: d.update(quotas={"security_groups": 4}),
     "topology: quotas.security_groups: region region-a needs 5 security groups in its project (one per role and "
     "Neutron's default), above the quota of 4; raise the project's quota with `openstack --os-region-name "
     "region-a quota set --secgroups 5 <project>` and set quotas.security_groups: 5"),
    # The schema: wrong shapes and types, misspelt settings anywhere, each with its full path.
    ("a bare count instead of the role's settings",
     lambda d: d["regions"][0].update(roles={"galera": 3}),
     "topology: regions[0].roles.galera: 3 is not a mapping; write the galera settings as a mapping, e.g. "
     "galera: {count: 3}"),
    ("misspelt arbitrator setting",
     lambda d: d.update(arbitrator={"region": "region-c", "flavour": "m1.small"}),
     "topology: arbitrator.flavour: is not a known setting; use one of flavor, region, vcpus"),
    ("misspelt default arbitrator setting",
     lambda d: d["defaults"].update(arbitrator={"vcpu": 2}),
     "topology: defaults.arbitrator.vcpu: is not a known setting; use one of flavor, vcpus"),
    ("misspelt existing network setting",
     lambda d: d["regions"][1].update(existing_network={"network_id": "n1", "subnet": "s1"}),
     "topology: regions[1].existing_network.subnet: is not a known setting; use one of network_id, subnet_id"),
    ("a key pair list",
     lambda d: d["defaults"].update(key_pair=["ops"]),
     "topology: defaults.key_pair: ['ops'] is not text; name one Nova key pair, e.g. key_pair: ops"),
    ("a numeric image",
     lambda d: d["defaults"].update(image=12),
     "topology: defaults.image: 12 is not text; name the Glance image, e.g. image: debian-12"),
    ("a count that is not a number",
     lambda d: d["regions"][2].update(roles={"keystone": {"count": "3"}}),
     "topology: regions[2].roles.keystone.count: '3' is not a whole number; give the number of nodes as a whole "
     "number, e.g. count: 3"),
    ("the old per-group rule setting",
     lambda d: d["defaults"].update(max_rules_per_group=100),
     "topology: defaults.max_rules_per_group: is not a known setting; Neutron's rule quota is per project, not "
     "per group: set quotas.security_group_rules instead"),
    ("half the IPv4 internet as the admin network",
     lambda d: d.update(admin_cidr="0.0.0.0/1"),
     "topology: admin_cidr: 0.0.0.0/1 opens SSH to 2^31 addresses, more than an operator network (at most a /16 "
     "for IPv4, a /48 for IPv6); give the CIDR of your bastion or operator network, a /16 or smaller"),
    ("an IPv4 admin network larger than a /16",
     lambda d: d.update(admin_cidr="10.0.0.0/15"),
     "topology: admin_cidr: 10.0.0.0/15 opens SSH to 2^17 addresses, more than an operator network (at most a "
     "/16 for IPv4, a /48 for IPv6); give the CIDR of your bastion or operator network, a /16 or smaller"),
    ("the IPv6 internet as the admin network",
     lambda d: d.update(admin_cidr="2000::/3"),
     "topology: admin_cidr: 2000::/3 opens SSH to 2^125 addresses, more than an operator network (at most a /16 "
     "for IPv4, a /48 for IPv6); give the CIDR of your bastion or operator network, a /48 or smaller"),
    ("all of IPv6 as the admin network",
     lambda d: d.update(admin_cidr="::/0"),
     "topology: admin_cidr: ::/0 opens SSH to the whole internet, more than an operator network (at most a /16 "
     "for IPv4, a /48 for IPv6); give the CIDR of your bastion or operator network, a /48 or smaller"),
]


@pytest.mark.parametrize("mutation,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_topology_fails_with_one_clear_line(mutation, message):
    with pytest.raises(TopologyError) as info:
        load_topology(_mutate(mutation))
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_stack_region_not_in_topology():
    topo = load_topology(example())
    with pytest.raises(TopologyError) as info:
        topo.region("region-d")
    assert str(info.value) == (
        "config: stack config keystone-multiregion:region: region 'region-d' is not in the topology "
        "(regions: region-a, region-b, region-c); set it to one of those names, or add the region to topology.yaml")


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text("name: keystone\nregions: [\n")
    with pytest.raises(TopologyError, match=r"topology.yaml: line \d+: is not valid YAML"):
        load_topology_file(path)
    data = example()
    data["regions"][0]["cidr"] = "not-a-cidr"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TopologyError) as info:
        load_topology_file(path)
    assert str(info.value).startswith(f"{path}: regions[0].cidr: 'not-a-cidr' is not a valid CIDR")
    with pytest.raises(TopologyError, match="does not exist"):
        load_topology_file(tmp_path / "missing.yaml")


def two_regions_and_a_witness() -> dict:
    data = example()
    data["regions"] = data["regions"][:2]
    data["regions"].append({"name": "witness", "index": 9, "cidr": "10.10.9.0/24", "external_network": "public",
                            "witness": True})
    data["arbitrator"] = {"region": "witness"}
    return data


def test_two_regions_need_a_witness_site():
    data = two_regions_and_a_witness()
    topo = load_topology(data)
    assert topo.galera_voters == 7  # 3 + 3 data nodes + the arbitrator
    assert [n.name for n in topo.nodes("witness")] == ["arbitrator-witness-1"]
    assert topo.vips("witness") == ()
    rules = security_rules(topo, "witness")
    assert {r.group for r in rules} == {"arbitrator"}
    # SSH from the admin network, node_exporter from the monitoring network, replication.
    assert {(r.protocol, r.port) for r in rules} == {("tcp", 22), ("tcp", 9100), ("tcp", 4567), ("udp", 4567)}
    # Without the witness the two regions are even: 6 voters.
    data["regions"] = data["regions"][:2]
    del data["arbitrator"]
    with pytest.raises(TopologyError, match="6 Galera nodes make 6 voters"):
        load_topology(data)
    # The arbitrator inside one of the two regions gives that region the majority.
    data["arbitrator"] = {"region": "region-a"}
    with pytest.raises(TopologyError, match="region region-a holds 4 of 7 Galera voters"):
        load_topology(data)


@pytest.mark.parametrize("change,message", [
    (lambda d: d.pop("arbitrator"),
     "topology: regions[2].witness: witness is a witness region without the arbitrator; set arbitrator.region: "
     "witness, or remove witness: true"),
    (lambda d: d["regions"][2].update(roles={"keystone": {"count": 1}}),
     "topology: regions[2].roles: is set on a witness region; remove it: a witness region runs only the arbitrator"),
    (lambda d: d.update(bootstrap_region="witness"),
     "topology: bootstrap_region: 'witness' is a witness region, which holds no data; bootstrap from a region "
     "with Galera nodes"),
])
def test_bad_witness(change, message):
    data = two_regions_and_a_witness()
    change(data)
    with pytest.raises(TopologyError) as info:
        load_topology(data)
    assert str(info.value) == message


# --- the schema -------------------------------------------------------------------------------

def test_every_schema_field_names_its_fix():
    """A schema error's fix is its field's description: no field may lack one."""
    from pydantic import BaseModel

    from keystone_multiregion import topology

    models = [m for m in vars(topology).values()
              if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == topology.__name__
              and m.model_fields]
    assert len(models) >= 10
    for model in models:
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name}"
            assert model.model_config.get("extra") == "forbid", model.__name__


def test_schema_errors_are_one_line_with_the_full_path():
    data = example()
    data["regions"][2]["roles"] = {"memcached": {"count": 2, "vcpus": True}}
    with pytest.raises(TopologyError) as info:
        load_topology(data)
    assert str(info.value) == ("topology: regions[2].roles.memcached.vcpus: True is not a whole number; give the "
                               "flavor's number of vCPUs (1 or more)")
    data = example()
    data["regions"] = "region-a"
    with pytest.raises(TopologyError) as info:
        load_topology(data)
    assert str(info.value).startswith("topology: regions: 'region-a' is not a list; list the regions")


def test_small_operator_networks_are_accepted_ipv6_too():
    data = example()
    data["admin_cidr"] = "10.0.0.0/16"
    assert load_topology(data).admin_cidr == "10.0.0.0/16"
    data["admin_cidr"] = "2001:db8:1::/48"
    topo = load_topology(data)
    [ssh] = [r for r in security_rules(topo, "region-a") if r.port == 22 and r.group == "galera"]
    assert (ssh.remote, ssh.ethertype) == ("2001:db8:1::/48", "IPv6")


# --- security group rules against the project's quota ---------------------------------------------

def nine_regions() -> dict:
    """The 5-region layout (one Galera node each) grown to nine regions."""
    data = five_regions()
    data["regions"] = [{"name": f"r{i}", "index": i, "cidr": f"172.20.{i * 4}.0/22", "external_network": "ext-net",
                        "public_hostname": f"keystone.r{i}.example.net"} for i in range(1, 10)]
    data["bootstrap_region"] = "r1"
    return data


def test_peers_in_the_same_region_share_one_group_rule():
    """Neutron's rule quota is per project: every /32 of a local peer was one rule more."""
    topo = load_topology(example())
    for region in topo.regions:
        local = {f"{n.address}/32" for n in topo.nodes(region.name)}
        rules = security_rules(topo, region.name)
        assert not local & {r.remote for r in rules}  # local peers only through their group
        # What each port admits is unchanged: e.g. MySQL from every proxy and Galera node.
        mysql = {p for r in rules if r.group == "galera" and r.port == 3306
                 for p in remote_prefixes(topo, region.name, r)}
        assert {f"{n.address}/32" for n in topo.nodes(role="galera") + topo.nodes(role="proxy")} <= mysql
        memcached = [r for r in rules if r.group == "memcached" and r.port == PORTS["memcached"]]
        # The local Keystone nodes, and the other memcached nodes (node-agent's restart guard).
        assert [(r.remote, r.remote_group) for r in memcached] == [(None, "keystone"), (None, "memcached")]


def test_rules_counted_per_project_with_what_neutron_adds():
    # 62 of ours + 2 egress in each of our 4 groups + the default group's 4.
    assert project_usage(load_topology(example()), "region-a").rules == 74
    assert project_usage(load_topology(example()), "region-a").groups == 5
    assert project_usage(load_topology(five_regions()), "par").rules == 72
    # Nine regions need 108: above Neutron's default quota, refused with the command that raises it.
    with pytest.raises(TopologyError, match=r"quotas.security_group_rules: region r1 needs 108 security group "
                                            r"rules .* --secgroup-rules 108 <project>`"):
        load_topology(nine_regions())
    data = nine_regions()
    data["quotas"] = {"security_group_rules": 108}
    assert project_usage(load_topology(data), "r9").rules == 108
    data["defaults"]["peer_rules"] = "cidr"
    del data["quotas"]
    assert project_usage(load_topology(data), "r9").rules < 100


def test_a_group_rule_admits_the_group_members():
    topo = load_topology(example())
    proxies = [n.address for n in topo.nodes("region-b", "proxy")]
    vips = [v.address for v in topo.vips("region-b")]
    assert group_members(topo, "region-b", "proxy") == tuple(proxies + vips)  # the VIP ports are in the group
    [vrrp] = [r for r in security_rules(topo, "region-b") if r.protocol == VRRP_PROTOCOL]
    assert remote_prefixes(topo, "region-b", vrrp) == tuple(f"{a}/32" for a in proxies + vips)


def test_lab_firewall_expands_group_rules_to_member_addresses():
    from lab.firewall import ruleset

    topo = load_topology_file(ROOT / "lab" / "topology.yaml")

    def sources(node, port):
        out = set()
        for line in ruleset(topo, topo.node(node)).splitlines():
            if f"dport {port} accept" in line:
                assert line.strip().startswith("ip saddr "), line
                out.add(line.split()[2])
        return out

    assert sources("memcached-lab-a-1", 11211) == {f"{n.address}/32" for n in topo.nodes("lab-a", "keystone")
                                                   + topo.nodes("lab-a", "memcached")}
    assert sources("galera-lab-b-1", 4444) == {f"{n.address}/32" for n in topo.nodes(role="galera")}
    assert sources("keystone-lab-c-1", 5000) == {f"{a}/32" for a in group_members(topo, "lab-c", "proxy")}
    vrrp = [line for line in ruleset(topo, topo.node("proxy-lab-a-1")).splitlines() if "protocol 112" in line]
    assert {line.split()[2] for line in vrrp} == {f"{a}/32" for a in group_members(topo, "lab-a", "proxy")}


# --- validate ----------------------------------------------------------------------------------------

def test_validate_checks_every_region_stack(tmp_path, capsys):
    from keystone_multiregion.__main__ import main

    for stack in ("region-a", "region-b", "shared"):
        (tmp_path / f"Pulumi.{stack}.yaml").write_text((ROOT / f"Pulumi.{stack}.yaml").read_text())
    assert main(["--project-dir", str(tmp_path), "validate"]) == 0
    capsys.readouterr()
    (tmp_path / "Pulumi.region-d.yaml").write_text("config:\n  keystone-multiregion:region: region-d\n")
    assert main(["--project-dir", str(tmp_path), "validate"]) == 2
    assert capsys.readouterr().err == (
        "error: config: Pulumi.region-d.yaml: keystone-multiregion:region: region 'region-d' is not in the topology "
        "(regions: region-a, region-b, region-c); set it to one of those names, or add the region to topology.yaml\n")
    (tmp_path / "Pulumi.region-d.yaml").unlink()
    assert main(["--project-dir", str(tmp_path), "validate"]) == 0
    out = capsys.readouterr().out
    assert "stacks: region-a -> region-a, region-b -> region-b\n" in out
    assert "security group rules 74 of 100, groups 5 of 10" in out


@pytest.mark.parametrize("dns, field, words", [
    ({"zone": "other.org."}, "regions[0].public_hostname", "is outside dns.zone other.org."),
    ({"zone": "not a zone"}, "dns.zone", "is not a DNS zone name"),
    ({"zone": "example.com", "ttl": 5}, "dns.ttl", "5 is below the minimum of 30"),
    ({"ttl": 300}, "dns.zone", "name the Designate zone"),
])
def test_dns_zone_must_hold_every_public_name(dns, field, words):
    data = example()
    data["dns"] = dns
    with pytest.raises(TopologyError) as info:
        load_topology(data)
    assert info.value.field == field and words in str(info.value)


def test_dns_zone_is_fully_qualified_and_optional():
    assert load_topology(example()).dns is None
    data = example()
    data["dns"] = {"zone": "Example.COM"}
    dns = load_topology(data).dns
    assert (dns.zone, dns.ttl) == ("example.com.", 300)
