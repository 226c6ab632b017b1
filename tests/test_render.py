"""Rendering: parsed results, StrictUndefined, secrets, cloud-init schema, offline render CLI."""

import configparser
import json
import os
import shutil
import subprocess
import sys

import jinja2
import pytest
import yaml

from helpers import ROOT, example, five_regions
from keystone_multiregion import pki, push
from keystone_multiregion.render import render_node, render_region, render_template
from keystone_multiregion.secrets import SecretsError, placeholder_secrets
from keystone_multiregion.topology import load_topology


SECRETS = pki.generate_secrets(load_topology(example()))


def _doc(user_data):
    assert user_data.startswith("#cloud-config\n")
    return yaml.safe_load(user_data)


def test_write_files_carry_rendered_files_byte_for_byte(topo):
    for node in topo.nodes():
        rendered = render_node(topo, node.name, SECRETS)
        doc = _doc(rendered.user_data)
        assert doc["hostname"] == node.name
        assert [(w["path"], w["content"], w["permissions"]) for w in doc["write_files"]] == \
               [(f.path, f.content, f.permissions) for f in rendered.files if not f.push_only]


def test_backup_secrets_are_pushed_never_in_user_data(topo):
    """The backup key and the object store's credentials reach a Galera node by push only."""
    secrets = {**SECRETS, "backup_key": "k" * 64,
               "backup_store": {"application_credential_id": "app-id-1234", "application_credential_secret": "s3cr3t-x"}}
    for node in topo.nodes(role="galera"):
        rendered = render_node(topo, node.name, secrets)
        pushed = [f for f in rendered.files if f.push_only]
        assert [f.path for f in pushed] == ["/etc/keystone-multiregion/backup-secrets.json"]
        assert pushed[0].permissions == "0600"
        body = json.loads(pushed[0].content)
        assert body == {"key": "k" * 64, "store": secrets["backup_store"]}
        for value in ("k" * 64, "s3cr3t-x", "app-id-1234"):
            assert value not in rendered.user_data
        assert "/etc/keystone-multiregion/backup-secrets.json" in [f["path"] for f in push.payload(topo, rendered)["files"]]
    for node in topo.nodes(role="keystone"):
        assert not any(f.push_only for f in render_node(topo, node.name, secrets).files)


def test_node_facts(topo):
    facts = json.loads(render_node(topo, "keystone-region-b-2", SECRETS).files[0].content)
    assert facts["address"] == "10.10.2.59"
    assert facts["region_index"] == 2
    assert facts["bootstrap_region"] == "region-a"
    assert len(facts["galera_peers"]) == 9


def test_galera_node_mounts_its_data_volume_without_reformatting(topo):
    rendered = render_node(topo, "galera-region-a-1", SECRETS)
    doc = _doc(rendered.user_data)
    assert doc["fs_setup"] == [{"label": "galera-data", "filesystem": "ext4", "device": "/dev/vdb",
                                "partition": "none", "overwrite": False}]
    assert doc["mounts"][0][:2] == ["LABEL=galera-data", "/var/lib/mysql"]
    assert "mariadb-server" in doc["packages"] and "galera-4" in doc["packages"]
    mycnf = {f.path: f for f in rendered.files}["/root/.my.cnf"]
    assert mycnf.permissions == "0600"
    parser = configparser.ConfigParser()
    parser.read_string(mycnf.content)
    assert parser["client"]["password"] == SECRETS["galera_root_password"]
    assert rendered.secret is True


def test_memcached_settings_follow_the_source_design(topo):
    rendered = render_node(topo, "memcached-region-c-2", SECRETS)
    conf = {f.path: f.content for f in rendered.files}["/etc/memcached.conf"]
    options = [line.split(None, 1) for line in conf.splitlines() if line.startswith("-")]
    opts = {k: (v[0] if v else None) for k, *v in options}
    assert opts["-m"] == "512"
    assert opts["-t"] == "1"  # one thread per core of an m1.small
    assert opts["-l"] == "10.10.3.75"  # private address only
    assert opts["-U"] == "0"
    assert rendered.secret is True  # only its SSH host key (the stack pins it when it pushes files)


def test_proxy_may_bind_addresses_it_does_not_hold(topo):
    rendered = render_node(topo, "proxy-region-b-1", SECRETS)
    sysctl = {f.path: f.content for f in rendered.files}["/etc/sysctl.d/60-keystone-multiregion.conf"]
    assert "net.ipv4.ip_nonlocal_bind = 1" in sysctl.splitlines()
    runcmd = _doc(rendered.user_data)["runcmd"]
    assert runcmd[0] == ["sysctl", "--system"]  # before HAProxy binds the VIPs it may not hold yet
    assert ["systemctl", "restart", "haproxy.service"] in runcmd[1:]


def test_missing_secret_is_one_clear_error(topo):
    with pytest.raises(SecretsError) as info:
        render_node(topo, "galera-region-a-1", {**SECRETS, "galera_root_password": ""})
    assert str(info.value).startswith("secrets: galera_root_password is missing or empty (needed by the galera "
                                      "nodes: root on every MariaDB node (local socket only))")
    # Even memcached, which needs no other secret, gets the SSH host key the push pins.
    with pytest.raises(SecretsError, match=r"^secrets: ssh_host_keys\.memcached-region-a-1\.private is missing"):
        render_node(topo, "memcached-region-a-1", {})
    with pytest.raises(SecretsError, match=r"^secrets: ssh_host_keys\.keystone-region-a-1\.private is missing"):
        render_node(topo, "keystone-region-a-1", {k: v for k, v in SECRETS.items() if k != "ssh_host_keys"})
    # The key repositories are pushed, not rendered: a Keystone node renders without them.
    assert render_node(topo, "keystone-region-a-1", {k: v for k, v in SECRETS.items() if k != "fernet_keys"})
    with pytest.raises(SecretsError, match=r"^secrets: public_tls\.region-a\.cert is missing"):
        render_node(topo, "proxy-region-a-1", {k: v for k, v in SECRETS.items() if k != "public_tls"})


def test_templates_are_strict():
    with pytest.raises(jinja2.UndefinedError):
        render_template("memcached/memcached.conf.j2", node=None, memory_mb=512)


def _schema(paths):
    cloud_init = shutil.which("cloud-init")
    assert cloud_init, "cloud-init is not installed: run tests/setup.sh (Debian package cloud-init)"
    return [subprocess.run([cloud_init, "schema", "--config-file", str(p)], capture_output=True, text=True)
            for p in paths]


def test_every_rendered_document_passes_cloud_init_schema(tmp_path):
    paths = []
    for data in (example(), five_regions()):
        topo = load_topology(data)
        for r in topo.regions:
            for rendered in render_region(topo, r.name, placeholder_secrets([n.name for n in topo.nodes()],
                                                                            [r.name for r in topo.regions])):
                path = tmp_path / f"{rendered.node.name}.yaml"
                path.write_text(rendered.user_data)
                paths.append(path)
    assert len(paths) == 33 + 5 * 7
    failures = [(p.name, r.stdout + r.stderr) for p, r in zip(paths, _schema(paths)) if r.returncode != 0]
    assert failures == []


def test_cloud_init_schema_check_can_fail(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\npackages: 5\nwrite_files: [{content: x}]\n")
    (result,) = _schema([bad])
    assert result.returncode != 0
    assert "packages" in result.stdout + result.stderr


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "keystone_multiregion", *args], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_offline_render_of_one_stack(tmp_path, topo):
    out = tmp_path / "render"
    result = _cli("render", "--stack", "region-b", "--out", str(out))
    assert result.returncode == 0, result.stderr
    nodes = sorted(p.name for p in (out / "region-b").iterdir())
    assert nodes == sorted(n.name for n in topo.nodes("region-b"))
    assert not (out / "region-a").exists()
    expected = render_node(topo, "galera-region-b-3", placeholder_secrets([n.name for n in topo.nodes()],
                                                                          [r.name for r in topo.regions]))
    node_dir = out / "region-b" / "galera-region-b-3"
    assert (node_dir / "user-data").read_text() == expected.user_data
    mycnf = node_dir / "files" / "root" / ".my.cnf"
    assert "<secret:galera_root_password>" in mycnf.read_text()
    assert oct(mycnf.stat().st_mode & 0o777) == "0o600"


def test_offline_render_of_all_stacks_with_a_secrets_file(tmp_path, topo):
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(yaml.safe_dump(SECRETS))
    out = tmp_path / "render"
    result = _cli("render", "--all", "--out", str(out), "--secrets", str(secrets))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["region-a", "region-b", "region-c"]
    written = sorted(p.parent.name for p in out.glob("*/*/user-data"))
    assert written == sorted(n.name for n in topo.nodes())
    assert (out / "region-c/galera-region-c-1/user-data").read_text() == \
        render_node(topo, "galera-region-c-1", SECRETS).user_data


def _mode(path):
    return path.stat().st_mode & 0o777


def test_offline_render_with_secrets_writes_them_for_the_owner_only(tmp_path, topo):
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(yaml.safe_dump(SECRETS))
    out = tmp_path / "render"
    old = os.umask(0)  # a permissive umask must not matter: each file is created with its own mode
    try:
        result = _cli("render", "--region", "region-a", "--out", str(out), "--secrets", str(secrets))
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    seen = set()
    for node in topo.nodes("region-a"):
        rendered = render_node(topo, node.name, SECRETS)
        node_dir = out / "region-a" / node.name
        assert _mode(node_dir / "user-data") == (0o600 if rendered.secret else 0o644), node.name
        seen.add(rendered.secret)
        for f in rendered.files:
            assert _mode(node_dir / "files" / f.path.lstrip("/")) == int(f.permissions, 8), f.path
    assert True in seen


def test_render_over_an_earlier_render_tightens_modes_before_writing(tmp_path, topo):
    from keystone_multiregion.render import write_rendered
    rendered = render_node(topo, "galera-region-a-1", SECRETS)
    node_dir = tmp_path / "region-a" / "galera-region-a-1"
    mycnf = node_dir / "files" / "root" / ".my.cnf"
    mycnf.parent.mkdir(parents=True)
    for path in (node_dir / "user-data", mycnf):  # left world-readable by an earlier render
        path.write_text("old\n")
        os.chmod(path, 0o644)
    write_rendered(rendered, tmp_path)
    assert _mode(node_dir / "user-data") == 0o600 and _mode(mycnf) == 0o600
    assert (node_dir / "user-data").read_text() == rendered.user_data


def test_offline_render_errors_are_one_line(tmp_path):
    result = _cli("render", "--stack", "region-z", "--out", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("error: stack 'region-z': there is no Pulumi.region-z.yaml")
    assert result.stderr.count("\n") == 1
    data = example()
    data["regions"][1]["cidr"] = "10.10.1.128/25"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = _cli("--topology", str(bad), "validate")
    assert result.returncode == 2
    assert result.stderr == (f"error: {bad}: regions[1].cidr: 10.10.1.128/25 overlaps regions[0].cidr "
                             "10.10.1.0/24; give every region its own non-overlapping range\n")
    result = _cli("render", "--region", "region-a", "--out", str(tmp_path), "--secrets", str(bad))
    assert result.returncode == 2 and "secrets: vrrp_password is missing" in result.stderr  # proxies render first


def test_validate_command_summarises_the_topology():
    result = _cli("validate")
    assert result.returncode == 0, result.stderr
    assert "3 regions, 9 Galera voters, bootstrap region region-a" in result.stdout


def test_validate_says_what_is_backed_up_and_warns_without_backups(tmp_path):
    result = _cli("validate")
    assert "backups: full every 24 h, incremental every 1 h, kept 14 days, into keystone-backups-<region>" \
        in result.stdout
    data = yaml.safe_load((ROOT / "topology.yaml").read_text())
    del data["backup"]
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(data))
    result = _cli("--topology", str(tmp_path / "topology.yaml"), "--project-dir", str(ROOT), "validate")
    assert result.returncode == 0, result.stderr
    assert "WARNING: no backup section" in result.stdout


# --- user_data as Nova gets it -----------------------------------------------------------------

def _real_size_secrets(topo):
    """Generated secrets (real certificates and keys, as the shared stack makes them) and
    object-store credentials as long as real ones (an application credential's secret: 86)."""
    from keystone_multiregion.secrets import BACKUP_STORE, BACKUP_STORE_FIELDS
    values = pki.generate_secrets(topo)
    values[BACKUP_STORE] = {f: "s" * 86 for fields in BACKUP_STORE_FIELDS.values() for f in fields}
    return values


def _topologies():
    from keystone_multiregion.topology import load_topology_file
    yield "topology.yaml", load_topology_file(ROOT / "topology.yaml")
    yield "five regions", load_topology(five_regions())
    for name in ("topology.yaml", "topology-region-d.yaml", "topology-region-r.yaml", "topology-witness.yaml"):
        yield f"lab/{name}", load_topology_file(ROOT / "lab" / name)


def test_every_node_user_data_fits_nova_limit_gzip_compressed():
    """Nova refuses user data over 65535 bytes (base64): every node of every bundled topology,
    with real-size secrets, fits once gzip-compressed; the plain document would not (a Galera
    node's is over twice the limit), which is why it is compressed."""
    from keystone_multiregion.render import NOVA_USER_DATA_LIMIT, user_data_sizes
    largest = {}
    for label, topo in _topologies():
        for role, (size, node) in user_data_sizes(topo, _real_size_secrets(topo)).items():
            if size > largest.get(role, (0, ""))[0]:
                largest[role] = (size, f"{label}: {node}")
    print({role: f"{size} bytes ({where})" for role, (size, where) in sorted(largest.items())})
    assert {"galera", "keystone", "memcached", "proxy", "replica", "arbitrator"} <= set(largest)
    assert all(size <= NOVA_USER_DATA_LIMIT for size, _ in largest.values()), largest
    topo = load_topology(example())
    galera = render_node(topo, topo.nodes(role="galera")[0].name, SECRETS)
    assert 4 * len(galera.user_data.encode()) / 3 > NOVA_USER_DATA_LIMIT  # uncompressed it would not fit


def test_user_data_round_trips_and_is_the_same_each_time():
    from keystone_multiregion.render import decode_user_data
    topo = load_topology(example())
    name = topo.nodes(role="keystone")[0].name
    one, two = render_node(topo, name, SECRETS), render_node(topo, name, SECRETS)
    assert one.encoded_user_data == two.encoded_user_data  # no timestamp in the gzip header: no diff in a preview
    assert decode_user_data(one.encoded_user_data) == one.user_data


def test_cloud_init_itself_decompresses_the_user_data():
    """Debian's cloud-init (22.4, the image's) reads the gzip-compressed document Nova serves
    (base64-decoded by Nova's metadata service) as the cloud-config it is."""
    import base64
    topo = load_topology(example())
    rendered = render_node(topo, topo.nodes(role="galera")[0].name, SECRETS)
    served = base64.b64decode(rendered.encoded_user_data)
    code = ("import sys; from cloudinit.user_data import convert_string; "
            "msg = convert_string(sys.stdin.buffer.read()); sys.stdout.buffer.write(msg.get_payload(decode=True))")
    out = subprocess.run(["/usr/bin/python3", "-c", code], input=served, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()[-500:]
    assert out.stdout.decode() == rendered.user_data


def test_user_data_over_nova_limit_is_refused_naming_the_node():
    import base64
    import random
    from keystone_multiregion.render import UserDataTooLarge, encode_user_data
    noise = base64.b64encode(random.Random(1).randbytes(60_000)).decode()  # gzip cannot shrink it much
    with pytest.raises(UserDataTooLarge, match=r"galera-x-1: its cloud-init document is \d+ bytes .* over Nova's "
                                               r"limit of 65535 bytes.*Fix: "):
        encode_user_data("#cloud-config\n" + noise, "galera-x-1")
