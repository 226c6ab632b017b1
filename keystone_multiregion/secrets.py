"""Secrets shared by every region, by name.

The shared stack generates every name in SECRETS once (pulumi-random) and exports them
as one secret map; each region stack reads that map by StackReference. The renderer
checks that a node gets every secret its role needs before anything is rendered.
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

# Which secrets each role's cloud-init carries. A role listed here gets user_data marked secret.
ROLE_SECRETS: dict[str, tuple[str, ...]] = {
    "galera": ("galera_root_password",),
    "arbitrator": (),
    "keystone": (),
    "memcached": (),
    "proxy": (),
}


class SecretsError(ValueError):
    pass


def placeholder_secrets() -> dict[str, str]:
    """Stand-ins for the offline render that reviewers diff: visibly not real."""
    return {name: f"<secret:{name}>" for name in SECRETS}


def require_secrets(role: str, secrets: Mapping[str, str], source: str = "secrets") -> dict[str, str]:
    """The secrets a role needs, or one clear error naming the first missing one."""
    out = {}
    for name in ROLE_SECRETS[role]:
        value = secrets.get(name) if secrets is not None else None
        if not isinstance(value, str) or not value:
            raise SecretsError(
                f"{source}: {name} is missing or empty (needed by the {role} nodes: {SECRETS[name][1]}); "
                "run `pulumi up` on the shared stack first, or add it to the secrets file")
        out[name] = value
    return out
