"""Secrets, by name: the shared ones, and each node's TLS credentials.

The shared stack generates every name in SECRETS once (pulumi-random) plus the CA that
signs Galera's replication and SST certificates (pulumi-tls), and exports them as one
secret map; each region stack reads it by StackReference and issues a certificate per
Galera node (its address as subjectAltName: the SST donor checks it). The renderer
checks that a node gets everything its role needs before anything is rendered.

Render input (a plain mapping):
    {<name in SECRETS>: str, ..., "galera_ca_cert": PEM,
     "tls": {<node name>: {"cert": PEM, "key": PEM}}}
"""

from __future__ import annotations

from typing import Mapping

# name -> (length of the generated value, what it is for)
SECRETS: dict[str, tuple[int, str]] = {
    "galera_root_password": (32, "root on every MariaDB node (local socket only)"),
    "galera_sst_password": (32, "the mariabackup SST user between Galera donors and joiners"),
    "keystone_db_password": (32, "Keystone's database user"),
    "keystone_admin_password": (32, "the Keystone bootstrap admin user"),
}
CA_CERT = "galera_ca_cert"

# Which shared secrets each role's cloud-init carries; a role listed with any, or one that
# gets TLS credentials, has its user_data marked secret.
ROLE_SECRETS: dict[str, tuple[str, ...]] = {
    "galera": ("galera_root_password", "galera_sst_password"),
    "arbitrator": (),
    "keystone": (),
    "memcached": (),
    "proxy": (),
}
# Roles that speak Galera's replication protocol, which crosses the WAN: TLS everywhere.
TLS_ROLES = ("galera", "arbitrator")


class SecretsError(ValueError):
    pass


def role_has_secrets(role: str) -> bool:
    return bool(ROLE_SECRETS[role]) or role in TLS_ROLES


def placeholder_secrets(node_names=()) -> dict:
    """Stand-ins for the offline render that reviewers diff: visibly not real."""
    values: dict = {name: f"<secret:{name}>" for name in SECRETS}
    values[CA_CERT] = f"<{CA_CERT}>\n"
    values["tls"] = {n: {"cert": f"<tls cert of {n}>\n", "key": f"<secret:tls key of {n}>\n"} for n in node_names}
    return values


def _missing(name: str, role: str, why: str, source: str) -> SecretsError:
    return SecretsError(
        f"{source}: {name} is missing or empty (needed by the {role} nodes: {why}); "
        "run `pulumi up` on the shared stack first, or add it to the secrets file")


def require_secrets(role: str, secrets: Mapping, node_name: str | None = None, source: str = "secrets") -> dict:
    """What a node of `role` needs, or one clear error naming the first missing piece."""
    secrets = secrets or {}
    out: dict = {}
    for name in ROLE_SECRETS[role]:
        value = secrets.get(name)
        if not isinstance(value, str) or not value:
            raise _missing(name, role, SECRETS[name][1], source)
        out[name] = value
    if role in TLS_ROLES:
        ca = secrets.get(CA_CERT)
        if not isinstance(ca, str) or not ca:
            raise _missing(CA_CERT, role, "the CA of replication and SST TLS", source)
        creds = (secrets.get("tls") or {}).get(node_name) or {}
        for part in ("cert", "key"):
            if not isinstance(creds.get(part), str) or not creds.get(part):
                raise _missing(f"tls.{node_name}.{part}", role, "this node's replication TLS credentials", source)
        out.update(ca_cert=ca, tls_cert=creds["cert"], tls_key=creds["key"])
    return out
