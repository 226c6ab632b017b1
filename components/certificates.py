"""A key and a certificate signed by one of the shared stack's CAs."""

from __future__ import annotations

import pulumi
import pulumi_tls as tls

from keystone_multiregion.certificates import CERT_RENEWAL_HOURS, CERT_VALIDITY_HOURS


def signed_certificate(parent: pulumi.Resource, prefix: str, suffix: str, common_name: str, dns_names: list[str],
                       ip_addresses: list[str], ca_key: pulumi.Input[str], ca_cert: pulumi.Input[str],
                       allowed_uses: list[str]):
    """`<prefix>-key-<suffix>`, `<prefix>-csr-<suffix>`, `<prefix>-cert-<suffix>`; returns
    (certificate PEM, private key PEM) Outputs. The certificate lives CERT_VALIDITY_HOURS and a
    `pulumi up` in its last CERT_RENEWAL_HOURS re-issues it (same key and names;
    keystone_multiregion/certificates.py)."""
    child = pulumi.ResourceOptions(parent=parent)
    key = tls.PrivateKey(f"{prefix}-key-{suffix}", algorithm="ECDSA", ecdsa_curve="P256", opts=child)
    csr = tls.CertRequest(f"{prefix}-csr-{suffix}", private_key_pem=key.private_key_pem,
                          subject=tls.CertRequestSubjectArgs(common_name=common_name),
                          dns_names=dns_names, ip_addresses=ip_addresses, opts=child)
    cert = tls.LocallySignedCert(
        f"{prefix}-cert-{suffix}", cert_request_pem=csr.cert_request_pem, ca_private_key_pem=ca_key,
        ca_cert_pem=ca_cert, validity_period_hours=CERT_VALIDITY_HOURS, early_renewal_hours=CERT_RENEWAL_HOURS,
        allowed_uses=allowed_uses, opts=child)
    return cert.cert_pem, key.private_key_pem
