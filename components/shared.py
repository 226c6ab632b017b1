"""The shared stack: secrets every region uses, generated once."""

from __future__ import annotations

import pulumi
import pulumi_random as random

from keystone_multiregion.secrets import SECRETS


class SharedSecrets(pulumi.ComponentResource):
    secrets: pulumi.Output[dict]

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None):
        super().__init__("keystone-multiregion:shared:SharedSecrets", name, None, opts)
        values = {}
        for secret, (length, purpose) in SECRETS.items():
            # Letters and digits only: these end up in INI files and connection URLs,
            # where quoting special characters is a classic source of outages.
            values[secret] = random.RandomPassword(
                secret.replace("_", "-"), length=length, special=False,
                opts=pulumi.ResourceOptions(parent=self, protect=True)).result
        self.secrets = pulumi.Output.secret(pulumi.Output.all(**values))
        self.register_outputs({"secrets": self.secrets})
