"""The policy pack's entry point.

The Pulumi CLI runs this file (`pulumi preview --policy-pack policy`) through the Python
analyzer shim, `python -u -m pulumi.policy <engine> <pack dir>`. Building the PolicyPack
starts the analyzer's gRPC server, prints its port and blocks until the engine is done, so
the policies themselves live in policies.py, importable without any of that.
"""

import sys
from pathlib import Path

from pulumi_policy import EnforcementLevel, PolicyPack

PACK_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACK_DIR.parent
if str(PACK_DIR) not in sys.path:
    sys.path.insert(0, str(PACK_DIR))
# The project's own topology loader, to read admin_cidr from the topology every stack reads.
if str(PROJECT_DIR) not in sys.path:
    sys.path.append(str(PROJECT_DIR))

import policies  # noqa: E402

PolicyPack(
    name=policies.PACK_NAME,
    description="keystone-multiregion: only HTTPS faces the world (no database, internal Keystone or "
                "VRRP port), SSH only from the admin network, unversioned https catalog, anti-affinity, "
                "protected Galera volumes and backup containers, one node of a role changed at a time.",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=policies.make_policies(policies.admin_cidr_from_topology(PROJECT_DIR / "topology.yaml"),
                                    policies.trusted_cidrs_from_topology(PROJECT_DIR / "topology.yaml"),
                                    policies.backup_from_topology(PROJECT_DIR / "topology.yaml")),
)
