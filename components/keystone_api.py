"""Dynamic resources that talk to Keystone's API where pulumi-openstack has no resource:
a readiness gate, and a catalog region. Standard library only: the engine runs them in
its own provider process."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult


def _context(ca_pem: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()


def _request(method: str, url: str, ca_pem: str | None, body: dict | None = None, token: str | None = None,
             timeout: float = 30):
    headers = {"Content-Type": "application/json", **({"X-Auth-Token": token} if token else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_context(ca_pem)) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class KeystoneReadyProvider(ResourceProvider):
    """Waits until Keystone answers GET <url>/v3 with 200, bounded by `timeout_s`."""

    def create(self, props):
        url, deadline = props["url"].rstrip("/"), time.monotonic() + float(props["timeout_s"])
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                status, _, body = _request("GET", f"{url}/v3", props.get("ca_pem"), timeout=10)
                if status == 200:
                    version = json.loads(body)["version"]["id"]
                    return CreateResult(id_=url, outs={**props, "version": version})
                last = f"HTTP {status}"
            except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
                last = str(exc)
            time.sleep(5)
        raise Exception(f"Keystone at {url} was not ready after {props['timeout_s']}s ({last}); check the "
                        "region's proxies and Keystone nodes, then run `pulumi up` again")


class KeystoneReady(pulumi.dynamic.Resource):
    version: pulumi.Output[str]

    def __init__(self, name: str, url: pulumi.Input[str], ca_pem: pulumi.Input[str] | None = None,
                 timeout_s: int = 1800, opts: pulumi.ResourceOptions | None = None):
        super().__init__(KeystoneReadyProvider(), name,
                         {"url": url, "ca_pem": ca_pem, "timeout_s": timeout_s, "version": None}, opts)


def _admin_token(props) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"id": "default"}, "password": props["admin_password"]}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}
    status, headers, text = _request("POST", f"{props['url'].rstrip('/')}/v3/auth/tokens", props.get("ca_pem"), body)
    if status != 201:
        raise Exception(f"admin login at {props['url']} failed: HTTP {status} {text[:200]!r}")
    return {k.lower(): v for k, v in headers.items()}["x-subject-token"]


class CatalogRegionProvider(ResourceProvider):
    """A Keystone catalog region (pulumi-openstack has no resource for it)."""

    def create(self, props):
        token = _admin_token(props)
        url = f"{props['url'].rstrip('/')}/v3/regions"
        status, _, text = _request("POST", url, props.get("ca_pem"),
                                   {"region": {"id": props["region_id"], "description": props["description"]}}, token)
        if status == 409:  # keystone-manage bootstrap made it already: adopt it
            status, _, text = _request("PATCH", f"{url}/{props['region_id']}", props.get("ca_pem"),
                                       {"region": {"description": props["description"]}}, token)
        if status not in (200, 201):
            raise Exception(f"creating region {props['region_id']} failed: HTTP {status} {text[:200]!r}")
        return CreateResult(id_=props["region_id"], outs=props)

    def diff(self, _id, olds, news):
        replaces = ["region_id"] if olds.get("region_id") != news.get("region_id") else []
        changed = olds.get("description") != news.get("description")
        return DiffResult(changes=bool(replaces) or changed, replaces=replaces, delete_before_replace=True)

    def update(self, _id, _olds, news):
        token = _admin_token(news)
        status, _, text = _request("PATCH", f"{news['url'].rstrip('/')}/v3/regions/{news['region_id']}",
                                   news.get("ca_pem"), {"region": {"description": news["description"]}}, token)
        if status != 200:
            raise Exception(f"updating region {news['region_id']} failed: HTTP {status} {text[:200]!r}")
        return UpdateResult(outs=news)

    def delete(self, _id, props):
        token = _admin_token(props)
        status, _, text = _request("DELETE", f"{props['url'].rstrip('/')}/v3/regions/{props['region_id']}",
                                   props.get("ca_pem"), None, token)
        if status not in (204, 404):
            raise Exception(f"deleting region {props['region_id']} failed: HTTP {status} {text[:200]!r}")


class CatalogRegion(pulumi.dynamic.Resource):
    def __init__(self, name: str, url: pulumi.Input[str], region_id: str, admin_password: pulumi.Input[str],
                 ca_pem: pulumi.Input[str] | None = None, description: str = "",
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__(CatalogRegionProvider(), name,
                         {"url": url, "region_id": region_id, "admin_password": pulumi.Output.secret(admin_password),
                          "ca_pem": ca_pem, "description": description}, opts)
