"""The lab's catalog and client configuration as plain data (lab/catalog.py)."""
from __future__ import annotations

from keystone_multiregion.roles.keystone import catalog_entries
from keystone_multiregion.topology import load_topology_file
from lab import catalog
from lab.deployment import LAB_TOPOLOGY

TOPO = load_topology_file(LAB_TOPOLOGY)


def test_regions_in_stack_order_bootstrap_first():
    assert catalog.serving_regions(TOPO)[0] == TOPO.bootstrap_region
    assert sorted(catalog.serving_regions(TOPO)) == sorted(r.name for r in TOPO.regions if TOPO.vips(r.name))


def test_clouds_yaml_one_cloud_per_region_unversioned_with_the_labs_ca():
    clouds = catalog.clouds_yaml(TOPO, "/lab/public-ca.pem")["clouds"]
    assert set(clouds) == {"lab-a", "lab-b", "lab-c"}
    b = clouds["lab-b"]
    assert b["auth"]["auth_url"] == "https://identity.lab-b.ksl.test"  # no /v3: the client discovers it
    assert (b["region_name"], b["cacert"], b["identity_api_version"]) == ("lab-b", "/lab/public-ca.pem", 3)
    assert "password" not in b["auth"]
    assert catalog.secure_yaml(TOPO, "s3cret")["clouds"]["lab-b"] == {"auth": {"password": "s3cret"}}


def test_hosts_file_names_each_public_endpoint_at_its_vip():
    lines = catalog.hosts_file(TOPO).splitlines()
    for region in ("lab-a", "lab-b", "lab-c"):
        assert f"{TOPO.vips(region, 'public')[0].address} identity.{region}.ksl.test" in lines


def test_the_lab_registers_exactly_catalog_entries():
    spec = catalog.registration_spec(TOPO, ["lab-a", "lab-c"], "pw", "PEM")
    assert [{k: v for k, v in r.items() if k != "url"} for r in spec["regions"]] == \
        [catalog_entries(TOPO, "lab-a"), catalog_entries(TOPO, "lab-c")]
    assert spec["regions"][1]["url"] == "https://identity.lab-c.ksl.test"
    assert spec["bootstrap_region"] == TOPO.bootstrap_region


def test_lab_openstack_passes_every_argument_to_the_client(monkeypatch, tmp_path, capsys):
    from lab import __main__ as cli
    seen = {}
    monkeypatch.setattr(cli, "_openstack", lambda args: seen.update(args=args.args, labdir=args.labdir) or 0)
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    assert cli.main(["--labdir", str(tmp_path), "openstack", "--os-cloud", "lab-b", "token", "issue", "-f", "json"]) == 0
    assert seen == {"args": ["--os-cloud", "lab-b", "token", "issue", "-f", "json"], "labdir": str(tmp_path)}
