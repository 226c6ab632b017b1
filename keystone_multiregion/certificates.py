"""How long certificates live and when `pulumi up` renews them (pulumi-tls `early_renewal_hours`:
inside that window the next `pulumi up` re-issues the certificate, same key and names). One
source for the stacks (components/), the lab and the offline render (pki.py) and the README;
plain numbers, so the Pulumi program needs no X.509 library."""

# Node certificates (Galera, arbitrator) and the public endpoints' development certificates: two
# years, re-issued by any `pulumi up` in their last 60 days, before they expire.
CERT_VALIDITY_HOURS = 2 * 365 * 24
CERT_RENEWAL_HOURS = 60 * 24
# The CAs: ten years, renewed in their last three. A renewed CA certificate keeps the CA's key and
# name, so it verifies everything the old one signed; it outlives every certificate it signs
# (CA_RENEWAL_HOURS > CERT_VALIDITY_HOURS). A new CA *key* is a rotation (README).
CA_VALIDITY_HOURS = 10 * 365 * 24
CA_RENEWAL_HOURS = 3 * 365 * 24
