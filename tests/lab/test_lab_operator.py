"""The lab as an operator meets it (#13): the catalog registered by the stacks' own code, and
python-openstackclient run where a user sits, with the lab's clouds.yaml."""
from __future__ import annotations

import base64
import json
import os
import time
import uuid

import pytest
import yaml

pytestmark = pytest.mark.lab


def _os(dep, *args, cloud=None, check=True, config_file=None):
    from lab import catalog
    out = catalog.openstack(dep, [*args, "-f", "json"] if args[-1] != "--no-json" else list(args[:-1]), cloud=cloud,
                            config_file=config_file)
    if check:
        assert out.returncode == 0, f"openstack {' '.join(args)}: exit {out.returncode}: {out.stderr.strip()[-800:]}"
    return json.loads(out.stdout) if check and out.stdout.strip() else out


def test_the_catalog_holds_every_regions_unversioned_endpoints(deployment):
    from keystone_multiregion.roles.keystone import catalog_entries
    from lab.catalog import serving_regions
    regions = serving_regions(deployment.topo)
    listed = _os(deployment, "endpoint", "list")
    assert sorted((e["Region"], e["Interface"], e["URL"], e["Service Name"], e["Service Type"]) for e in listed) == \
        sorted((e["region"], e["interface"], e["url"], "keystone", "identity")
               for r in regions for e in catalog_entries(deployment.topo, r)["endpoints"])
    assert all("/v3" not in e["URL"] for e in listed)
    only_b = _os(deployment, "endpoint", "list", "--region", "lab-b", cloud="lab-c")
    assert {e["Region"] for e in only_b} == {"lab-b"} and len(only_b) == 3
    region_ids = {r["Region"]: r["Description"] for r in _os(deployment, "region", "list")}
    assert region_ids == {r: catalog_entries(deployment.topo, r)["region"]["description"] for r in regions}
    catalog = _os(deployment, "catalog", "list", cloud="lab-b")
    assert [c["Type"] for c in catalog] == ["identity"]


def test_registering_again_changes_nothing(deployment):
    """As a second `pulumi up`: the stack's code finds everything registered."""
    from lab import catalog
    steps = catalog.register(deployment)
    assert [s["region"] for s in steps] == catalog.serving_regions(deployment.topo)
    assert all(set(s["endpoints"].values()) == {"as registered"} and "service" not in s for s in steps)


def test_token_issue_in_every_region_through_version_discovery(deployment):
    from lab.catalog import serving_regions
    for region in serving_regions(deployment.topo):
        token = _os(deployment, "token", "issue", cloud=region)
        assert token["id"] and token["project_id"] and token["user_id"]


def test_a_user_created_through_lab_a_is_shown_through_lab_c(deployment):
    name = f"op-{uuid.uuid4().hex[:8]}"
    created = _os(deployment, "user", "create", "--password", "pw-" + uuid.uuid4().hex, name, cloud="lab-a")
    try:
        shown = _os(deployment, "user", "show", name, cloud="lab-c")
        assert (shown["id"], shown["name"]) == (created["id"], name)
    finally:
        _os(deployment, "user", "delete", created["id"], "--no-json", cloud="lab-a")
    gone = _os(deployment, "user", "show", name, "--no-json", cloud="lab-c", check=False)
    assert gone.returncode != 0 and "No user with a name or ID" in gone.stderr


def test_a_login_with_password_and_totp_code(deployment):
    from lab.ksclient import totp
    name, password = f"mfa-op-{uuid.uuid4().hex[:8]}", "pw-" + uuid.uuid4().hex
    secret = base64.b32encode(os.urandom(20)).decode().rstrip("=")
    user = _os(deployment, "user", "create", "--password", password, "--project", "admin", name, cloud="lab-a")
    try:
        _os(deployment, "role", "add", "--user", name, "--project", "admin", "member", "--no-json", cloud="lab-a")
        _os(deployment, "credential", "create", "--type", "totp", name, secret, cloud="lab-a")
        _os(deployment, "user", "set", "--enable-multi-factor-auth", "--multi-factor-auth-rule", "password,totp",
            name, "--no-json", cloud="lab-a")
        as_user = ["--os-username", name, "--os-password", password, "--os-project-name", "admin"]
        alone = _os(deployment, *as_user, "token", "issue", cloud="lab-b", check=False)
        assert alone.returncode != 0, "the password alone got a token"
        # The user's own cloud entry: password and TOTP (lab.catalog.mfa_cloud).
        from lab import catalog
        from lab.layers import proxy as proxy_layer
        own = catalog.client_dir(deployment) / f"clouds-{name}.yaml"
        own.write_text(yaml.safe_dump({"clouds": {"lab-b-mfa": catalog.mfa_cloud(
            deployment.topo, "lab-b", proxy_layer.public_ca_file(deployment), name, password, "admin")}}))
        wrong = _os(deployment, "--os-passcode", "000000" if totp(secret) != "000000" else "111111", "token", "issue",
                    cloud="lab-b-mfa", config_file=str(own), check=False)
        assert wrong.returncode != 0, "a wrong code got a token"
        token = _os(deployment, "--os-passcode", totp(secret), "token", "issue", cloud="lab-b-mfa",
                    config_file=str(own))
        assert token["user_id"] == user["id"]
    finally:
        _os(deployment, "user", "delete", user["id"], "--no-json", cloud="lab-a")


def test_a_client_pinned_to_lab_b_works_while_lab_bs_keystone_nodes_are_down(deployment):
    from lab.layers import keystone as keystone_layer
    nodes = [n.name for n in deployment.topo.nodes("lab-b", "keystone")]
    for name in nodes:
        deployment.lab.procs.stop(name, "keystone", timeout=10)
    try:
        assert not any(deployment.lab.procs.is_alive(n, "keystone") for n in nodes)
        t = time.monotonic()
        token = _os(deployment, "token", "issue", cloud="lab-b")
        listed = _os(deployment, "endpoint", "list", "--region", "lab-b", cloud="lab-b")
        print(f"with lab-b's Keystone down: token issue and endpoint list through lab-b in "
              f"{time.monotonic() - t:.1f}s")
        assert token["id"] and len(listed) == 3
    finally:
        for name in nodes:
            keystone_layer.start_api(deployment, name)
    assert all(deployment.lab.procs.is_alive(n, "keystone") for n in nodes)


def test_status_picture_draws_the_running_lab(deployment, tmp_path):
    """`./run lab status --picture`: who holds each VIP, each member's state and the writers,
    as the running lab says; the picture drawn by Graphviz."""
    from keystone_multiregion.picture import topology_dot
    from lab import __main__ as cli
    live = deployment.live_state()
    topo = deployment.topo
    assert live["vip_holders"] == {v.address: [v.master] for r in topo.regions for v in topo.vips(r.name)}
    assert live["galera"] == {n.name: {"state": "Synced", "primary": True, "size": len(topo.galera_members)}
                              for n in topo.nodes(role="galera")}
    assert live["writers"] == {r.name: topo.nodes(r.name, "galera")[0].name for r in topo.regions if topo.vips(r.name)}
    assert live["down"] == []
    args = ["--labdir", deployment.lab.labdir, "--prefix", deployment.lab.prefix, "--topology",
            deployment.topology_path, "status", "--picture"]
    assert cli.main([*args, str(tmp_path / "lab.png")]) == 0
    assert (tmp_path / "lab.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main([*args, str(tmp_path / "lab.dot")]) == 0
    assert (tmp_path / "lab.dot").read_text() == topology_dot(topo, deployment.live_state())
