"""The shared stack: secrets every region uses, generated once."""

from __future__ import annotations

import pulumi
import pulumi_random as random
import pulumi_tls as tls

from keystone_multiregion.certificates import CA_RENEWAL_HOURS, CA_VALIDITY_HOURS
from keystone_multiregion.keys import CREDENTIAL_MAX_ACTIVE, digests, imported_repository, repository
from keystone_multiregion.migration import ROTATIONS
from keystone_multiregion.secrets import (BACKUP_STORE, BACKUP_STORE_FIELDS, CA_CERT, IMPORTED_KEY_DIGESTS,
                                          KEY_REPOSITORIES, PUBLIC_CA_CERT, SECRETS)
from keystone_multiregion.topology import Topology

# The shared stack's config key holding the object store's credentials for the backups.
BACKUP_STORE_CONFIG = "backupStore"


def backup_store_config(topo: Topology, value, is_secret: bool) -> dict | None:
    """The object store's credentials from the shared stack's config `backupStore` (a
    structured secret), only the fields of the topology's auth_version; None when the
    topology has no backup. Anything missing, empty or not set as a secret raises ValueError:
    one line naming the key and the command that fixes it, before any resource exists."""
    if topo.backup is None:
        return None
    version = topo.backup.store.auth_version
    fields = BACKUP_STORE_FIELDS[version]
    fix = " and ".join(f"`pulumi config set --secret --path '{BACKUP_STORE_CONFIG}.{f}' <{f}> -s shared`"
                       for f in fields)
    why = (f"topology.yaml has backup: (store {topo.backup.store.auth_url}, auth_version '{version}'), whose "
           f"credentials the Galera nodes receive from the shared stack")
    if value is None:
        problem = "is not set"
    elif not isinstance(value, dict):
        problem = f"is not a mapping of {', '.join(fields)}"
    else:
        missing = [f for f in fields if not isinstance(value.get(f), str) or not value.get(f).strip()]
        problem = f"lacks {', '.join(missing)}" if missing else ("is not a secret (its values would sit in clear text "
                                                               "in Pulumi.shared.yaml)" if not is_secret else "")
    if problem:
        raise ValueError(f"config: keystone-multiregion:{BACKUP_STORE_CONFIG} {problem}; {why}: run {fix}")
    return {f: value[f] for f in fields}


class SharedSecrets(pulumi.ComponentResource):
    secrets: pulumi.Output[dict]

    def __init__(self, name: str, deployment: str, fernet_rotations: int = 0, max_active_keys: int = 5,
                 credential_rotations: int = 0, backup_store: pulumi.Input[dict] | None = None,
                 imported_keys: dict | None = None, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keystone-multiregion:shared:SharedSecrets", name, None, opts)
        values = {}
        for secret, (length, purpose) in SECRETS.items():
            # Letters and digits only: these end up in INI files and connection URLs,
            # where quoting special characters is a classic source of outages.
            values[secret] = random.RandomPassword(
                secret.replace("_", "-"), length=length, special=False,
                opts=pulumi.ResourceOptions(parent=self, protect=True)).result
        # The CA of Galera's replication and SST TLS: every region issues its nodes'
        # certificates with it (that traffic crosses the WAN).
        ca_key, ca_cert = self._ca("galera-ca", f"{deployment} Galera CA")
        values[CA_CERT] = ca_cert.cert_pem
        # The Fernet and credential key repositories, identical in every region, each after
        # `fernetRotations` / `credentialRotations` (config) rotations of one key sequence
        # (keys.py). Credential keys encrypt TOTP secrets: they keep three keys (README).
        for repo in KEY_REPOSITORIES:
            rotations, max_active = ((fernet_rotations, max_active_keys) if repo == "fernet_keys"
                                     else (credential_rotations, CREDENTIAL_MAX_ACTIVE))
            keys = [random.RandomBytes(f"{repo.replace('_', '-')}-{i}", length=32,
                                       opts=pulumi.ResourceOptions(parent=self, protect=True)).base64
                    for i in range(rotations + 2)]
            # Fernet keys are URL-safe base64 of 32 random bytes.
            if imported_keys is None:
                values[repo] = pulumi.Output.all(*keys).apply(
                    lambda ks, r=rotations, m=max_active: repository(
                        [k.replace("+", "-").replace("/", "_") for k in ks], r, m))
            else:
                # Moving an existing Keystone in (migration.py: importedKeys, checked by the
                # program): its repositories exactly, then rotated on from them; the keys staged
                # by those rotations come from the sequence above, past the ones already used
                # (the sequence stays declared: its keys are protected).
                base = imported_keys[ROTATIONS[repo]]
                values[repo] = pulumi.Output.all(*keys).apply(
                    lambda ks, r=rotations, m=max_active, b=base, imp=imported_keys[repo]: imported_repository(
                        imp, [k.replace("+", "-").replace("/", "_") for k in ks[b + 2:]], r - b, m))
        if imported_keys is not None:
            # The region stacks' key push lets the nodes take exactly these wholesale
            # (keystone-node install-keys --import-digest): their primary was never staged there.
            values[IMPORTED_KEY_DIGESTS] = digests({repo: imported_keys[repo] for repo in KEY_REPOSITORIES})
        # A development CA for the public endpoints of regions without a real certificate:
        # every region's proxies trust it to verify the others (their backup servers).
        dev_key, dev_ca = self._ca("public-dev-ca", f"{deployment} public endpoints (development CA)")
        values[PUBLIC_CA_CERT] = dev_ca.cert_pem
        # The object store's credentials for the backups (backup_store_config), given by the
        # operator: exported in the secret map beside the backup key (SECRETS) that the loop
        # above generates, so the region stacks push both to their Galera nodes.
        if backup_store is not None:
            values[BACKUP_STORE] = pulumi.Output.secret(backup_store)
        self.secrets = pulumi.Output.secret(pulumi.Output.all(**values))
        self.ca_key = pulumi.Output.secret(ca_key.private_key_pem)
        self.public_dev_ca_key = pulumi.Output.secret(dev_key.private_key_pem)
        self.register_outputs({"secrets": self.secrets, "galera_ca_key": self.ca_key,
                               "public_dev_ca_key": self.public_dev_ca_key})

    def _ca(self, name: str, common_name: str):
        """A protected CA key and its self-signed CA certificate (`<name>-key`, `<name>`), which a
        `pulumi up` in its last CA_RENEWAL_HOURS re-issues with the same key and name: the renewed
        certificate verifies everything the old one signed, so it is not protected (protection
        would turn the renewal into an error). A new key is a CA rotation (README)."""
        key = tls.PrivateKey(f"{name}-key", algorithm="ECDSA", ecdsa_curve="P256",
                             opts=pulumi.ResourceOptions(parent=self, protect=True))
        cert = tls.SelfSignedCert(
            name, private_key_pem=key.private_key_pem, is_ca_certificate=True,
            subject=tls.SelfSignedCertSubjectArgs(common_name=common_name), validity_period_hours=CA_VALIDITY_HOURS,
            early_renewal_hours=CA_RENEWAL_HOURS,
            allowed_uses=["cert_signing", "crl_signing", "digital_signature"], opts=pulumi.ResourceOptions(parent=self))
        return key, cert
