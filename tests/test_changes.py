"""Changing a running deployment's topology (keystone_multiregion/changes.py): the order of
the stacks, and every intermediate Galera cluster checked (an odd number of votes, no region
holding half of them)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from helpers import ROOT, example, five_regions
from keystone_multiregion import changes, pki
from keystone_multiregion.topology import TopologyError, load_topology


def with_region(data: dict, name: str = "region-d", index: int = 4, **roles) -> dict:
    data["regions"].append({"name": name, "index": index, "cidr": f"10.10.{index}.0/24",
                            "external_network": "public", "public_hostname": f"identity.{name}.example.com",
                            **({"roles": roles} if roles else {})})
    return data


def test_a_region_joins_with_one_node_of_weight_two_and_every_step_is_odd():
    old = load_topology(example())                               # 3 regions x 3 Galera nodes: 9 votes
    new = load_topology(with_region(example(), galera={"count": 1, "weight": 2}))
    steps = changes.plan(old, new)
    assert [(s.operation, s.stack) for s in steps] == [("pulumi up", "region-a"), ("pulumi up", "region-b"),
                                                        ("pulumi up", "region-c"), ("pulumi up", "region-d")]
    assert steps[-1].members == ("galera-region-d-1",) and steps[-1].votes == [11]
    assert all(not s.members for s in steps[:3])  # the existing regions only get files


def test_two_new_voters_one_after_the_other_pass_through_an_even_cluster_and_are_refused():
    old = load_topology(example())
    new = load_topology(with_region(example(), galera={"count": 2}))  # 11 votes in the end, but 10 after the first
    with pytest.raises(TopologyError) as err:
        changes.plan(old, new)
    msg = str(err.value)
    assert "step 4 (pulumi up region-d)" in msg and "galera-region-d-1" in msg and "10 votes, an even number" in msg
    assert "weight 2" in msg  # the fix


def test_a_region_leaves_first_by_destroy_and_its_members_leave_the_last_first():
    old = load_topology(with_region(example(), galera={"count": 1, "weight": 2}))
    new = load_topology(example())
    steps = changes.plan(old, new)
    assert (steps[0].operation, steps[0].stack, steps[0].votes) == ("pulumi destroy", "region-d", [9])
    assert [s.stack for s in steps[1:]] == ["region-a", "region-b", "region-c"]
    five = load_topology(five_regions())
    four = five_regions()
    four["regions"].pop()  # 5 -> 4 voters: the end state itself is refused by the topology
    with pytest.raises(TopologyError):
        load_topology(four)


def test_removing_a_region_that_would_leave_a_region_with_half_the_votes_is_refused():
    # 3 regions x 1 node + region-d with 2 nodes of weight 1 + one of weight... : start from a
    # valid 5-vote cluster where removing one region leaves 2+1 (region-b with 2 of 3).
    data = five_regions()
    data["regions"] = data["regions"][:3]
    data["regions"][1]["roles"] = {"galera": {"count": 2}}   # fra 1, ams 2, lon 1 + par 1 = 5
    data["regions"].append({"name": "par", "index": 4, "cidr": "172.20.16.0/22", "external_network": "ext-net",
                            "public_hostname": "keystone.par.example.net"})
    old = load_topology(data)
    smaller = five_regions()
    smaller["regions"] = smaller["regions"][:2] + [dict(smaller["regions"][2], roles={"galera": {"count": 1}})]
    smaller["regions"][1]["roles"] = {"galera": {"count": 1}}
    new = load_topology(smaller)   # fra 1, ams 1, lon 1: valid in the end
    with pytest.raises(TopologyError) as err:
        changes.plan(old, new)
    # par leaves first: 4 votes
    assert "step 1 (pulumi destroy par)" in str(err.value) and "4 votes" in str(err.value)


def test_a_vote_changed_on_running_members_is_checked_member_by_member():
    old = load_topology(with_region(example(), galera={"count": 1, "weight": 2}))
    data = with_region(example(), galera={"count": 1, "weight": 4})  # 9 + 4 = 13 votes, region-d 4 of 13
    new = load_topology(data)
    steps = changes.plan(old, new)
    assert steps[-1].stack == "region-d" and steps[-1].members == ("galera-region-d-1",) and steps[-1].votes == [13]
    # Both ends valid (11 and 13 votes), but the first member's change makes 12.
    pair = load_topology(with_region(example(), galera={"count": 2}))
    doubled = load_topology(with_region(example(), galera={"count": 2, "weight": 2}))
    with pytest.raises(TopologyError) as err:
        changes.plan(pair, doubled)
    assert "galera-region-d-1 joining or changing its vote to 2" in str(err.value) and "12 votes" in str(err.value)


@pytest.mark.parametrize("field,value", [("index", 7), ("cidr", "10.10.77.0/24")])
def test_a_running_region_keeps_its_index_and_cidr(field, value):
    old = load_topology(example())
    data = example()
    data["regions"][1][field] = value
    with pytest.raises(TopologyError) as err:
        changes.plan(old, load_topology(data))
    assert f"regions[1].{field}" in str(err.value) and "add a new one and remove the old one" in str(err.value)


def test_the_lab_region_d_topology_is_a_valid_change_both_ways():
    from keystone_multiregion.topology import load_topology_file
    three = load_topology_file(ROOT / "lab" / "topology.yaml")
    four = load_topology_file(ROOT / "lab" / "topology-region-d.yaml")
    assert [s.votes for s in changes.plan(three, four) if s.members] == [[5]]
    assert [s.votes for s in changes.plan(four, three) if s.members] == [[3]]


def test_plan_command_prints_the_order_and_fails_with_one_line(tmp_path):
    old, good, bad = tmp_path / "old.yaml", tmp_path / "good.yaml", tmp_path / "bad.yaml"
    old.write_text(yaml.safe_dump(example()))
    good.write_text(yaml.safe_dump(with_region(example(), galera={"count": 1, "weight": 2})))
    bad.write_text(yaml.safe_dump(with_region(example(), galera={"count": 2})))
    run = lambda new: subprocess.run([sys.executable, "-m", "keystone_multiregion", "--topology", str(new),  # noqa: E731
                                      "plan", "--from", str(old)], capture_output=True, text=True, cwd=ROOT,
                                     timeout=60)
    ok = run(good)
    assert ok.returncode == 0, ok.stderr
    assert "4. pulumi up on stack region-d: region-d joins" in ok.stdout
    assert "galera-region-d-1: 11 votes after it (region-a 3, region-b 3, region-c 3, region-d 2)" in ok.stdout
    refused = run(bad)
    assert refused.returncode == 2 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1 and "10 votes" in refused.stderr


def test_secrets_for_an_added_region_come_from_the_same_cas_and_keep_the_rest():
    old = load_topology(example())
    new = load_topology(with_region(example(), galera={"count": 1, "weight": 2}))
    before = pki.generate_secrets(old)
    after = pki.extend_secrets(new, before)
    assert {k: v for k, v in after["tls"].items() if k in before["tls"]} == before["tls"]
    assert "galera-region-d-1" in after["tls"] and "region-d" in after["public_tls"]
    assert after["ssh_host_keys"]["proxy-region-a-1"] == before["ssh_host_keys"]["proxy-region-a-1"]
    from cryptography import x509
    new_cert = x509.load_pem_x509_certificate(after["tls"]["galera-region-d-1"]["cert"].encode())
    ca = x509.load_pem_x509_certificate(before["ca_cert"].encode()) if "ca_cert" in before else None
    if ca is None:
        from keystone_multiregion.secrets import CA_CERT
        ca = x509.load_pem_x509_certificate(before[CA_CERT].encode())
    new_cert.verify_directly_issued_by(ca)


def test_plan_from_git_compares_with_the_topology_of_a_revision(tmp_path):
    """What the deploy workflow runs on a push: the topology before (a git revision) against
    the one checked out; an unknown revision is one line."""
    repo = tmp_path / "repo"
    repo.mkdir()
    topo = repo / "topology.yaml"
    topo.write_text(yaml.safe_dump(with_region(example(), galera={"count": 1, "weight": 2})))
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "empty")
    git("add", "topology.yaml")
    git("-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", "with region-d")
    topo.write_text(yaml.safe_dump(example()))  # region-d removed in the work tree
    run = lambda rev: subprocess.run([sys.executable, "-m", "keystone_multiregion", "--topology", str(topo),  # noqa: E731
                                      "--project-dir", str(ROOT), "plan", "--from-git", rev],
                                     capture_output=True, text=True, cwd=ROOT, timeout=60)
    out = run("HEAD")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("1. pulumi destroy on stack region-d: region-d leaves")
    assert "galera-region-d-1: 9 votes after it" in out.stdout
    missing = run("HEAD~1")  # the topology did not exist yet
    assert missing.returncode != 0 and missing.stdout == ""
    assert len(missing.stderr.strip().splitlines()) == 1 and "--from-git HEAD~1" in missing.stderr


def test_a_replica_region_is_added_and_removed_without_a_vote_changing():
    """lab/topology-region-r.yaml (the replica drills add it to the running lab): the core's
    stacks first (their security groups admit the replicas), then the replica region; leaving,
    it goes first. No step touches a Galera member or a vote."""
    from keystone_multiregion.topology import load_topology_file
    three = load_topology_file(ROOT / "lab" / "topology.yaml")
    with_r = load_topology_file(ROOT / "lab" / "topology-region-r.yaml")
    up = changes.plan(three, with_r)
    assert [(s.operation, s.stack) for s in up] == [("pulumi up", "lab-a"), ("pulumi up", "lab-b"),
                                                     ("pulumi up", "lab-c"), ("pulumi up", "lab-r")]
    assert "replicas are seeded from the core" in up[-1].why and not any(s.members for s in up)
    down = changes.plan(with_r, three)
    assert [(s.operation, s.stack) for s in down][0] == ("pulumi destroy", "lab-r")
    assert "no Galera member" in down[0].why and not any(s.members for s in down)
