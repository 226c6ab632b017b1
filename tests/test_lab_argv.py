"""The lab's watch for secrets in command lines (lab/argv_secrets.py): fast, no lab needed."""

import subprocess
import sys

from lab import argv_secrets


def test_secret_values_are_the_secret_leaves_only():
    values = {"keystone_db_password": "db-password-123", "vrrp_password": "short", "galera_ca_cert": "-----BEGIN C",
              "tls": {"n1": {"cert": "-----BEGIN CERT", "key": "-----BEGIN KEY-----"}},
              "ssh_host_keys": {"n1": {"private": "private-key-bytes", "public": "ssh-ed25519 AAAA"}}}
    assert argv_secrets.secret_values(values) == {
        "db-password-123": "keystone_db_password", "-----BEGIN KEY-----": "tls.n1.key",
        "private-key-bytes": "ssh_host_keys.n1.private"}


def test_a_secret_in_a_command_line_is_found_and_not_repeated():
    secret = "argv-test-secret-4f1c2a"
    proc = subprocess.Popen(["sh", "-c", "read x", "sh", secret], stdin=subprocess.PIPE)
    try:
        with argv_secrets.Watch({secret: "test_password"}, interval=0.01) as watch:
            found = argv_secrets.scan({secret: "test_password"})
        assert found == [f"pid {proc.pid} (sh) carries test_password in its arguments"]
        assert watch.findings == found and secret not in " ".join(watch.findings)
    finally:
        proc.communicate(b"\n", timeout=10)
    # The same value on stdin is not in any command line.
    quiet = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"], stdin=subprocess.PIPE)
    try:
        assert argv_secrets.scan({secret: "test_password"}) == []
    finally:
        quiet.communicate(secret.encode() + b"\n", timeout=10)
