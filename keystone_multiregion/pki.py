"""A CA and per-node certificates for Galera's TLS, without a cloud: for the local lab and
for operators who render offline. The Pulumi stacks make the same with pulumi-tls."""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .certificates import CA_VALIDITY_HOURS, CERT_VALIDITY_HOURS


def _pem_key(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _now():
    return datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)


def make_ca(name: str) -> tuple[str, str]:
    """(certificate PEM, key PEM) of a new CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} Galera CA")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now()).not_valid_after(_now() + datetime.timedelta(hours=CA_VALIDITY_HOURS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def issue(ca_cert_pem: str, ca_key_pem: str, node_name: str, address: str | list[str]) -> tuple[str, str]:
    """(certificate PEM, key PEM) for a node, with its address(es) and name as subjectAltNames
    (the SST donor checks the joiner's certificate against its IP)."""
    addresses = [address] if isinstance(address, str) else list(address)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now()).not_valid_after(_now() + datetime.timedelta(hours=CERT_VALIDITY_HOURS))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(node_name)] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def ssh_host_key() -> dict[str, str]:
    """An Ed25519 SSH host key in OpenSSH formats (what the stack makes with pulumi-tls)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return {"private": private, "public": public.decode()}


def generate_secrets(topo) -> dict:
    """Every secret a topology needs, made locally: for the lab and for tests (the stacks make
    theirs with pulumi-random and pulumi-tls). The public endpoints get certificates from a
    development CA, returned as `public_ca_cert` so clients can trust them."""
    import secrets as _random

    from .secrets import CA_CERT, SECRETS

    values: dict = {name: _random.token_hex(max(4, length // 2))[:length] for name, (length, _) in SECRETS.items()}
    ca_cert, ca_key = make_ca(topo.name)
    values[CA_CERT] = ca_cert
    # The lab renews node certificates with it (drill D5); the stacks keep theirs in the
    # shared stack's state, never among the secrets they hand to nodes.
    values["lab_galera_ca_key"] = ca_key
    values["tls"], values["ssh_host_keys"] = {}, {}
    import base64
    import os
    for repo in ("fernet_keys", "credential_keys"):
        # Fernet keys: 32 random bytes, URL-safe base64. "0" is the staged key.
        values[repo] = {str(i): base64.urlsafe_b64encode(os.urandom(32)).decode() for i in range(2)}
    public_ca, public_ca_key = make_ca(f"{topo.name} public (development)")
    values["public_ca_cert"] = public_ca
    values["lab_public_ca_key"] = public_ca_key  # the lab issues a region added later its certificate
    values["public_tls"] = {}
    if topo.backup is not None:
        # Stand-ins for the operator's object store credentials (the lab puts its store's in).
        from .secrets import BACKUP_STORE, BACKUP_STORE_FIELDS
        values[BACKUP_STORE] = {f: _random.token_hex(16) for f in BACKUP_STORE_FIELDS[topo.backup.store.auth_version]}
    return extend_secrets(topo, values)


def extend_secrets(topo, values: dict) -> dict:
    """`values` with what nodes and regions of `topo` it does not cover yet added (a region
    added to a running lab): node certificates from the same CA, SSH host keys, the public
    endpoint's certificate. Nothing already there changes."""
    from .secrets import CA_CERT, PUSH_ROLES, TLS_ROLES
    out = {**values, "tls": dict(values.get("tls") or {}), "ssh_host_keys": dict(values.get("ssh_host_keys") or {}),
           "public_tls": dict(values.get("public_tls") or {})}
    for node in topo.nodes():
        if node.role in TLS_ROLES and node.name not in out["tls"]:
            if not out.get("lab_galera_ca_key"):
                raise ValueError("the secrets hold no lab_galera_ca_key to sign a new node's certificate")
            cert, key = issue(out[CA_CERT], out["lab_galera_ca_key"], node.name, node.address)
            out["tls"][node.name] = {"cert": cert, "key": key}
        if node.role in PUSH_ROLES and node.name not in out["ssh_host_keys"]:
            out["ssh_host_keys"][node.name] = ssh_host_key()
    for region in topo.regions:
        vips = [v.address for v in topo.vips(region.name)]
        if vips and region.name not in out["public_tls"]:
            if not out.get("lab_public_ca_key"):
                raise ValueError("the secrets hold no lab_public_ca_key to sign a new region's certificate")
            cert, key = issue(out["public_ca_cert"], out["lab_public_ca_key"], region.public_hostname, vips)
            out["public_tls"][region.name] = {"cert": cert, "key": key}
    return out
