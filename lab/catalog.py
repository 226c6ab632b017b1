"""The catalog, registered in the lab by the code the stacks run, and an operator's client.

A region stack registers its catalog entries (keystone_multiregion.roles.keystone.
catalog_entries) with a readiness gate and a catalog region (the dynamic providers of
components/keystone_api.py) and with pulumi-openstack's ServiceV3 and EndpointV3. The lab has
no Pulumi engine, so it runs the dynamic providers' own code, for real, against the lab's
Keystone, and registers the service and the endpoints through Keystone's API from the same
catalog_entries (what EndpointV3 would create: tests/test_components.py checks the stack's
resources against that function, tests/lab/test_lab_operator.py the lab's catalog).

Everything runs from `user`, a namespace where a user would sit: no node of any region,
outside every security group, reaching each region through its public name. The public
names resolve through a hosts file of the lab's (bound over /etc/hosts for that namespace
only). `./run lab openstack [--os-cloud REGION] ARGS...` runs python-openstackclient there
with the lab's clouds.yaml (one cloud per region, unversioned auth_url, the lab's CA) and
secure.yaml (the admin password, 0600).

    python -m lab.catalog register|unregister   (inside the user namespace; the spec on stdin)
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from keystone_multiregion.roles.keystone import catalog_entries, endpoint_urls

USER_HOST = "user"
CLIENT_PACKAGES = ("python3-openstackclient",)
REPO = Path(__file__).resolve().parent.parent


# -- plain data ------------------------------------------------------------------------------
def serving_regions(topo) -> list[str]:
    """The regions with a public endpoint (proxies), the bootstrap region first: the stack
    order, where the bootstrap region's stack creates the identity service."""
    names = [r.name for r in topo.regions if topo.vips(r.name)]
    return sorted(names, key=lambda n: n != topo.bootstrap_region)


def clouds_yaml(topo, ca_file: str) -> dict:
    """One cloud per region: its unversioned public endpoint (clients discover /v3), the admin
    project, the lab's CA. The password lives in secure.yaml."""
    return {"clouds": {region: {
        "auth": {"auth_url": endpoint_urls(topo, region)["public"], "username": "admin", "project_name": "admin",
                 "user_domain_name": "Default", "project_domain_name": "Default"},
        "region_name": region, "interface": "public", "identity_api_version": 3, "cacert": ca_file}
        for region in serving_regions(topo)}}


def secure_yaml(topo, admin_password: str) -> dict:
    return {"clouds": {region: {"auth": {"password": admin_password}} for region in serving_regions(topo)}}


def hosts_file(topo) -> str:
    lines = ["127.0.0.1 localhost"]
    for region in serving_regions(topo):
        lines.append(f"{topo.vips(region, 'public')[0].address} {topo.region(region).public_hostname}")
    return "\n".join(lines) + "\n"


def registration_spec(topo, regions: list[str], admin_password: str, ca_pem: str) -> dict:
    """What the lab registers: each region's catalog_entries, through its public endpoint."""
    return {"admin_password": admin_password, "ca_pem": ca_pem,
            "bootstrap_region": topo.bootstrap_region,
            "regions": [{"url": endpoint_urls(topo, r)["public"], **catalog_entries(topo, r)} for r in regions]}


# -- the lab's side ----------------------------------------------------------------------------
def client_dir(dep) -> Path:
    return Path(dep.lab.labdir) / "client"


def client_env(dep) -> dict[str, str]:
    d = client_dir(dep)
    return {"OS_CLIENT_CONFIG_FILE": str(d / "clouds.yaml"), "OS_CLIENT_SECURE_FILE": str(d / "secure.yaml")}


def add_user_host(dep) -> str:
    """The user's namespace (once) and its files: hosts, clouds.yaml, secure.yaml (0600)."""
    from . import HostSpec
    from .layers import proxy as proxy_layer
    topo = dep.topo
    d = client_dir(dep)
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts").write_text(hosts_file(topo))
    (d / "clouds.yaml").write_text(yaml.safe_dump(clouds_yaml(topo, proxy_layer.public_ca_file(dep)), sort_keys=False))
    secure = d / "secure.yaml"
    secure.touch(mode=0o600)
    os.chmod(secure, 0o600)
    secure.write_text(yaml.safe_dump(secure_yaml(topo, dep.secrets()["keystone_admin_password"])))
    if USER_HOST not in dep.lab.net.hosts():
        home = serving_regions(topo)[0]
        net = topo.region(home).network
        dep.lab.net.add_host(HostSpec(USER_HOST, home, f"{net.network_address + 249}/{net.prefixlen}"))
    dep.lab.procs.set_binds(USER_HOST, {"/etc/hosts": str(d / "hosts")})
    return USER_HOST


def register(dep, regions: list[str] | None = None, timeout: float = 600) -> list[dict]:
    """Register the catalog of `regions` (default: every region with proxies, bootstrap region
    first) from the user namespace, with the stacks' code. Returns what each step did."""
    return _run(dep, "register", regions or serving_regions(dep.topo), timeout)


def unregister(dep, regions: list[str], timeout: float = 300) -> list[dict]:
    """What `pulumi destroy` of a region's stack does to the catalog: its endpoints deleted,
    then its region (the dynamic provider's delete), through another region's endpoint."""
    return _run(dep, "unregister", regions, timeout)


def _run(dep, verb: str, regions: list[str], timeout: float) -> list[dict]:
    from .layers import proxy as proxy_layer
    from .util import LabError
    add_user_host(dep)
    spec = registration_spec(dep.topo, regions, dep.secrets()["keystone_admin_password"],
                             Path(proxy_layer.public_ca_file(dep)).read_text())
    if verb == "unregister":  # through a region that stays
        spec["via"] = endpoint_urls(dep.topo, next(r for r in serving_regions(dep.topo) if r not in regions))["public"]
    out = dep.lab.procs.run(USER_HOST, [sys.executable, "-m", "lab.catalog", verb], input=json.dumps(spec),
                            env={"PYTHONPATH": str(REPO)}, timeout=timeout, check=False)
    if out.returncode != 0:
        raise LabError(f"{verb} of the catalog of {', '.join(regions)} failed (exit {out.returncode}): "
                       f"{out.stderr.strip()[-800:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mfa_cloud(topo, region: str, ca_file: str, username: str, password: str, project: str) -> dict:
    """A user's own cloud entry for a password+TOTP login in `region` (the code comes with
    `--os-passcode` at each command). The factors go in a YAML list: the command line's
    `--os-auth-methods` reaches keystoneauth as a string and is split into characters."""
    base = clouds_yaml(topo, ca_file)["clouds"][region]
    return {**base, "auth_type": "v3multifactor", "auth_methods": ["v3password", "v3totp"],
            "auth": {**base["auth"], "username": username, "password": password, "project_name": project}}


def openstack(dep, args: list[str], cloud: str | None = None, timeout: float = 120, check: bool = False,
              config_file: str | None = None):
    """python-openstackclient from the user namespace, as a user runs it (`--os-cloud` in
    `args` or `cloud` picks the region; the bootstrap region's cloud otherwise).
    `config_file`: another clouds.yaml (a user's own)."""
    argv = ["openstack", *(["--os-cloud", cloud] if cloud else []), *args]
    env = {**client_env(dep), "OS_CLOUD": serving_regions(dep.topo)[0],
           **({"OS_CLIENT_CONFIG_FILE": config_file} if config_file else {})}
    return dep.lab.procs.run(USER_HOST, argv, env=env, timeout=timeout, check=check)


# -- inside the user namespace -----------------------------------------------------------------
def _register(spec: dict) -> list[dict]:
    """The stack's registration, region by region: the readiness gate and the catalog region
    (the dynamic providers' code itself), then the identity service (created by the bootstrap
    region, found by the others) and the region's endpoints, as EndpointV3 creates them."""
    from urllib.parse import urlencode

    from components.keystone_api import CatalogRegionProvider, KeystoneReadyProvider, _admin_token, _request
    ca, password = spec["ca_pem"], spec["admin_password"]
    done = []
    for r in spec["regions"]:
        url, region = r["url"], r["region"]["id"]
        step = {"region": region}
        KeystoneReadyProvider().create({"url": url, "ca_pem": ca, "timeout_s": 300})
        CatalogRegionProvider().create({"url": url, "region_id": region, "admin_password": password, "ca_pem": ca,
                                        "description": r["region"]["description"]})
        token = _admin_token({"url": url, "admin_password": password, "ca_pem": ca})

        def call(method, path, body=None):
            status, _, text = _request(method, f"{url}/v3/{path}", ca, body, token)
            if status not in (200, 201, 204):
                raise SystemExit(f"{method} {url}/v3/{path}: HTTP {status} {text[:300]!r}")
            return json.loads(text) if text else {}

        service = r["service"]
        found = [s for s in call("GET", "services?" + urlencode({"type": service["type"]}))["services"]
                 if s.get("name") == service["name"]]
        if found:
            service_id = found[0]["id"]
        elif region == spec["bootstrap_region"]:
            service_id = call("POST", "services", {"service": {**service, "enabled": True}})["service"]["id"]
            step["service"] = "created"
        else:
            raise SystemExit(f"no {service['type']} service named {service['name']} in the catalog: the bootstrap "
                             f"region {spec['bootstrap_region']} registers it first")
        step["endpoints"] = {}
        for e in r["endpoints"]:
            query = urlencode({"service_id": service_id, "region_id": region, "interface": e["interface"]})
            existing = call("GET", f"endpoints?{query}")["endpoints"]
            if existing and existing[0]["url"] == e["url"]:
                step["endpoints"][e["interface"]] = "as registered"
            elif existing:
                call("PATCH", f"endpoints/{existing[0]['id']}", {"endpoint": {"url": e["url"]}})
                step["endpoints"][e["interface"]] = "url updated"
            else:
                call("POST", "endpoints", {"endpoint": {"service_id": service_id, "region_id": region,
                                                        "interface": e["interface"], "url": e["url"],
                                                        "enabled": True}})
                step["endpoints"][e["interface"]] = "created"
        done.append(step)
    return done


def _unregister(spec: dict) -> list[dict]:
    from urllib.parse import urlencode

    from components.keystone_api import CatalogRegionProvider, _admin_token, _request
    ca, password, url = spec["ca_pem"], spec["admin_password"], spec["via"]
    token = _admin_token({"url": url, "admin_password": password, "ca_pem": ca})
    done = []
    for r in spec["regions"]:
        region = r["region"]["id"]
        status, _, text = _request("GET", f"{url}/v3/endpoints?{urlencode({'region_id': region})}", ca, None, token)
        if status != 200:
            raise SystemExit(f"listing {region}'s endpoints: HTTP {status} {text[:300]!r}")
        deleted = 0
        for e in json.loads(text)["endpoints"]:
            status, _, text = _request("DELETE", f"{url}/v3/endpoints/{e['id']}", ca, None, token)
            if status not in (204, 404):
                raise SystemExit(f"deleting endpoint {e['id']}: HTTP {status} {text[:300]!r}")
            deleted += 1
        CatalogRegionProvider().delete(region, {"url": url, "region_id": region, "admin_password": password,
                                                "ca_pem": ca})
        done.append({"region": region, "endpoints_deleted": deleted, "region_deleted": True})
    return done


def main(argv: list[str]) -> int:
    verbs = {"register": _register, "unregister": _unregister}
    if len(argv) != 1 or argv[0] not in verbs:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(verbs[argv[0]](json.loads(sys.stdin.read()))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
