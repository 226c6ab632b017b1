"""Secrets, by name: the shared ones, and each node's TLS credentials.

The shared stack generates every name in SECRETS once (pulumi-random) plus the CA that
signs Galera's replication and SST certificates (pulumi-tls), and exports them as one
secret map; each region stack reads it by StackReference and issues a certificate per
Galera node (its address as subjectAltName: the SST donor checks it). The renderer
checks that a node gets everything its role needs before anything is rendered.

Render input (a plain mapping):
    {<name in SECRETS>: str, ..., "galera_ca_cert": PEM,
     "tls": {<node name>: {"cert": PEM, "key": PEM}},
     "public_tls": {<region name>: {"cert": PEM chain, "key": PEM}}}

The public certificate of a region's endpoint (HAProxy's external frontend) comes from the
stack's config when the operator has one, else the region stack makes one for development.
"""

from __future__ import annotations

from typing import Mapping

# name -> (length of the generated value, what it is for)
SECRETS: dict[str, tuple[int, str]] = {
    "galera_root_password": (32, "root on every MariaDB node (local socket only)"),
    "galera_sst_password": (32, "the mariabackup SST user between Galera donors and joiners"),
    "keystone_db_password": (32, "Keystone's database user"),
    "keystone_admin_password": (32, "the Keystone bootstrap admin user"),
    # keepalived's PASS authentication uses at most 8 characters.
    "vrrp_password": (8, "VRRP authentication between the proxies of a region"),
}
CA_CERT = "galera_ca_cert"
# The development CA of the public endpoints (used when no real certificates are configured).
PUBLIC_CA_CERT = "public_ca_cert"

# Which shared secrets each role's cloud-init carries; a role listed with any, or one that
# gets TLS credentials, has its user_data marked secret.
ROLE_SECRETS: dict[str, tuple[str, ...]] = {
    # The Galera node that starts the cluster creates Keystone's database user.
    "galera": ("galera_root_password", "galera_sst_password", "keystone_db_password"),
    "arbitrator": (),
    "keystone": ("keystone_db_password", "keystone_admin_password"),
    "memcached": (),
    "proxy": ("vrrp_password",),
}
# Roles that speak Galera's replication protocol, which crosses the WAN: TLS everywhere.
TLS_ROLES = ("galera", "arbitrator")


class SecretsError(ValueError):
    pass


# Key repositories identical in every region: Fernet (tokens and MFA receipts) and
# credentials (encrypts TOTP secrets). name -> {"0": staged key, "1".."n": others}.
KEY_REPOSITORIES = ("fernet_keys", "credential_keys")
KEY_ROLES = ("keystone",)

# Roles that terminate the region's public TLS endpoint.
PUBLIC_TLS_ROLES = ("proxy",)


def role_has_secrets(role: str) -> bool:
    return bool(ROLE_SECRETS[role]) or role in TLS_ROLES or role in PUBLIC_TLS_ROLES or role in KEY_ROLES


def placeholder_secrets(node_names=(), regions=()) -> dict:
    """Stand-ins for the offline render that reviewers diff: visibly not real."""
    values: dict = {name: f"<secret:{name}>" for name in SECRETS}
    values[CA_CERT] = f"<{CA_CERT}>\n"
    values["tls"] = {n: {"cert": f"<tls cert of {n}>\n", "key": f"<secret:tls key of {n}>\n"} for n in node_names}
    values["public_tls"] = {r: {"cert": f"<public certificate of {r}>\n", "key": f"<secret:public key of {r}>\n"}
                            for r in regions}
    for repo in KEY_REPOSITORIES:
        values[repo] = {str(i): f"<secret:{repo} {i}>" for i in range(2)}
    return values


def _missing(name: str, role: str, why: str, source: str) -> SecretsError:
    return SecretsError(
        f"{source}: {name} is missing or empty (needed by the {role} nodes: {why}); "
        "run `pulumi up` on the shared stack first, or add it to the secrets file")


def require_secrets(role: str, secrets: Mapping, node_name: str | None = None, source: str = "secrets",
                    region: str | None = None) -> dict:
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
    if role in KEY_ROLES:
        for repo in KEY_REPOSITORIES:
            keys = secrets.get(repo)
            if not isinstance(keys, Mapping) or "0" not in keys or len(keys) < 2:
                raise _missing(repo, role, "the key repository shared by every region (a staged key '0' and "
                               "at least one more)", source)
            out[repo] = {str(k): v for k, v in keys.items()}
    if role in PUBLIC_TLS_ROLES:
        creds = (secrets.get("public_tls") or {}).get(region) or {}
        for part in ("cert", "key"):
            if not isinstance(creds.get(part), str) or not creds.get(part):
                raise _missing(f"public_tls.{region}.{part}", role, "the region's public endpoint certificate", source)
        out.update(public_cert=creds["cert"], public_key=creds["key"])
        # The CA that signed the regions' development certificates, when they are such:
        # the proxies verify the other regions' endpoints (their backups) with it.
        ca = secrets.get(PUBLIC_CA_CERT)
        if isinstance(ca, str) and ca:
            out["public_ca_cert"] = ca
    return out
