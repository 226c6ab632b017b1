"""The proxy layer: HAProxy and keepalived (the VRRP addresses come from the topology)."""

from __future__ import annotations

from .base import File, RoleLayer

PUBLIC_PEM = "/etc/haproxy/certs/public.pem"


def _public_pem(topo, node, needed: dict) -> list[File]:
    # HAProxy's format: the certificate chain followed by the key, in one file.
    cert = needed["public_cert"] if needed["public_cert"].endswith("\n") else needed["public_cert"] + "\n"
    return [File(PUBLIC_PEM, cert + needed["public_key"], permissions="0600")]


def _cloud_config(topo, node, doc: dict) -> None:
    doc["runcmd"] = [["sysctl", "--system"]]


PROXY = RoleLayer(
    packages=("haproxy", "keepalived"),
    files=(("proxy/sysctl.conf.j2", "/etc/sysctl.d/60-keystone-multiregion.conf", "0644"),),
    secret_files=_public_pem, cloud_config=_cloud_config)

LAYERS = {"proxy": PROXY}
