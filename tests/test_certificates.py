"""Certificates are renewed before they expire, and a renewal never rebuilds a stateful VM.

Every certificate the stacks make (pulumi-tls) carries `early_renewal_hours`: a `pulumi up`
inside that window re-issues it (same key, same names). Under the Pulumi mocks a renewal is a
certificate resource returning a new PEM; what else then changes tells what it does to the
nodes."""

import datetime

import pytest
import yaml
from cryptography import x509

import pulumi_harness
from helpers import ROOT
from keystone_multiregion import certificates as lifetimes
from keystone_multiregion import pki
from keystone_multiregion.render import decode_user_data
from keystone_multiregion.stacks import region_stacks, stack_config
from keystone_multiregion.topology import load_topology
from pulumi_harness import run_program
from test_topology import two_regions_and_a_witness

CERT_TYPES = ("tls:index/locallySignedCert:LocallySignedCert", "tls:index/selfSignedCert:SelfSignedCert")
INSTANCE = "openstack:compute/instance:Instance"
# What each kind of certificate is, by its logical name (components/): the renewal window
# and lifetime the stacks must give it.
EXPECTED = {"tls-cert-": (lifetimes.CERT_VALIDITY_HOURS, lifetimes.CERT_RENEWAL_HOURS),
            "public-cert-": (lifetimes.CERT_VALIDITY_HOURS, lifetimes.CERT_RENEWAL_HOURS),
            "galera-ca": (lifetimes.CA_VALIDITY_HOURS, lifetimes.CA_RENEWAL_HOURS),
            "public-dev-ca": (lifetimes.CA_VALIDITY_HOURS, lifetimes.CA_RENEWAL_HOURS)}


def _witness_stack(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(two_regions_and_a_witness()))
    return "witness", {"region": "witness", "topology": str(path)}


def _every_stack(tmp_path):
    """The example's shared and region stacks, and a witness site (the arbitrator's certificate)."""
    stacks = [("shared", stack_config(ROOT, "shared"))]
    stacks += [(stack, stack_config(ROOT, stack)) for stack in sorted(region_stacks(ROOT))]
    return stacks + [_witness_stack(tmp_path)]


def _kind(name):
    kinds = [prefix for prefix in EXPECTED if name.startswith(prefix)]
    assert len(kinds) == 1, f"certificate {name!r} is of no known kind: give it a validity and a renewal window"
    return EXPECTED[kinds[0]]


def test_windows_leave_room_to_roll_out():
    # Renewal starts well before expiry and never at creation (pulumi-tls would then re-issue
    # on every `pulumi up`); the CA's window is the longest (everything it signed follows it).
    assert 0 < lifetimes.CERT_RENEWAL_HOURS < lifetimes.CERT_VALIDITY_HOURS
    assert 0 < lifetimes.CA_RENEWAL_HOURS < lifetimes.CA_VALIDITY_HOURS
    assert lifetimes.CA_RENEWAL_HOURS > lifetimes.CERT_RENEWAL_HOURS
    # A CA must outlive the certificates it signs, also those it signs on its last day before renewal.
    assert lifetimes.CA_RENEWAL_HOURS > lifetimes.CERT_VALIDITY_HOURS


def test_every_certificate_of_every_stack_is_renewed_early(tmp_path):
    names = set()
    for stack, config in _every_stack(tmp_path):
        certs = [r for r in run_program(stack, config).resources if r.type in CERT_TYPES]
        assert certs, stack
        for cert in certs:
            validity, renewal = _kind(cert.name)
            assert (cert.inputs["validityPeriodHours"], cert.inputs.get("earlyRenewalHours")) == (validity, renewal), \
                f"{stack}: {cert.name}"
            names.add(cert.name)
    # Every kind was seen: Galera nodes', the arbitrator's, the public endpoints' and both CAs.
    assert {"tls-cert-galera-region-a-1", "tls-cert-arbitrator-witness-1", "public-cert-region-b",
            "galera-ca", "public-dev-ca"} <= names


def test_the_shared_ca_certificates_can_be_renewed_but_never_their_keys():
    """A CA certificate re-issued with the same key and name verifies every certificate the old
    one signed: renewal is safe, so the certificate is not protected (a protected one would make
    the renewal an error). Its key is: a new key is a CA rotation (README)."""
    run = run_program("shared", stack_config(ROOT, "shared"))
    for ca in ("galera-ca", "public-dev-ca"):
        assert run.named(ca).protect is False
        assert run.named(f"{ca}-key").protect is True
        assert run.named(ca).inputs["privateKeyPem"] == f"mock-private-key-{ca}-key\n"


def _renewing(monkeypatch, renewed):
    """The mocks return a new PEM for the certificates whose names `renewed` accepts."""
    real = pulumi_harness._Mocks.new_resource

    def new_resource(self, args):
        rid, state = real(self, args)
        if args.typ in CERT_TYPES and renewed(args.name):
            state["certPem"] = f"renewed-{state['certPem']}"
        return rid, state
    monkeypatch.setattr(pulumi_harness._Mocks, "new_resource", new_resource)


def _changes(before, after):
    """{resource name: the inputs whose values differ} between two runs of one stack."""
    # The stack's root resource is registered by the first program run of the process only.
    old = {r.name: r for r in before.resources if r.type != "pulumi:pulumi:Stack"}
    new = [r for r in after.resources if r.type != "pulumi:pulumi:Stack"]
    assert sorted(old) == sorted(r.name for r in new)  # a renewal adds or removes nothing
    changes = {}
    for r in new:
        keys = {k for k in set(r.inputs) | set(old[r.name].inputs) if r.inputs.get(k) != old[r.name].inputs.get(k)}
        if keys:
            changes[r.name] = (r, keys)
    return changes


@pytest.mark.parametrize("stack", sorted(region_stacks(ROOT)) + ["witness"])
def test_a_renewed_node_certificate_changes_only_ignored_user_data(stack, tmp_path, monkeypatch):
    """A Galera node's or the arbitrator's new certificate reaches its cloud-init document,
    which stateful instances ignore: no VM is replaced, no volume touched. It reaches the
    running node by that node's push (files-<node>: node-agent restarts the member, guarded)."""
    name, config = (stack, stack_config(ROOT, stack)) if stack != "witness" else _witness_stack(tmp_path)
    before = run_program(name, config)
    _renewing(monkeypatch, lambda n: n.startswith("tls-cert-"))
    changes = _changes(before, run_program(name, config))
    topo = load_topology(yaml.safe_load((ROOT / "topology.yaml").read_text()) if stack != "witness"
                         else two_regions_and_a_witness())
    nodes = [n for n in topo.nodes(name) if n.role in ("galera", "arbitrator")]
    assert nodes
    assert sorted(changes) == sorted([f"instance-{n.name}" for n in nodes] + [f"files-{n.name}" for n in nodes])
    for name, (resource, keys) in changes.items():
        if name.startswith("files-"):  # the push carries the new certificate to the running node
            assert keys == {"stdin"} and "renewed-mock-cert-tls-cert-" in resource.inputs["stdin"]
            continue
        assert resource.type == INSTANCE and keys == {"userData"}
        assert "userData" in resource.ignore_changes and not resource.delete_before_replace
        assert "renewed-mock-cert-tls-cert-" in decode_user_data(resource.inputs["userData"])


def test_a_renewed_public_certificate_replaces_no_proxy(monkeypatch):
    before = run_program("region-a", stack_config(ROOT, "region-a"))
    _renewing(monkeypatch, lambda n: n.startswith("public-cert-"))
    changes = _changes(before, run_program("region-a", stack_config(ROOT, "region-a")))
    # Only the proxies carry the public certificate: their (ignored) user_data and their push,
    # which reloads HAProxy on one proxy after the other.
    assert sorted(changes) == ["files-proxy-region-a-1", "files-proxy-region-a-2",
                               "instance-proxy-region-a-1", "instance-proxy-region-a-2"]
    for name, (resource, keys) in changes.items():
        if name.startswith("files-"):
            assert keys == {"stdin"}
        else:
            assert keys == {"userData"} and "userData" in resource.ignore_changes


def test_offline_certificates_have_the_stacks_lifetimes():
    """The lab's and the offline render's CA and certificates (pki.py) live as long as the stacks'."""
    ca_pem, ca_key = pki.make_ca("t")
    cert_pem, _ = pki.issue(ca_pem, ca_key, "galera-a-1", "10.0.0.1")
    for pem, hours in ((ca_pem, lifetimes.CA_VALIDITY_HOURS), (cert_pem, lifetimes.CERT_VALIDITY_HOURS)):
        cert = x509.load_pem_x509_certificate(pem.encode())
        assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(hours=hours)
