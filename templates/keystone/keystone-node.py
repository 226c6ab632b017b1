#!/usr/bin/env python3
"""keystone-node: prepare and bootstrap this Keystone API node.

Shipped by keystone-multiregion to every Keystone node (cloud-init writes it to
/usr/local/sbin/keystone-node); the local lab runs the very same file. Standard library
only. Reads the node's facts from /etc/keystone-multiregion/node.json.

    keystone-node prepare     key repositories owned by keystone, 0700/0600
    keystone-node bootstrap   on the bootstrap node only: wait for the database, then
                              `keystone-manage db_sync` and `keystone-manage bootstrap`
                              (both safe to run again); elsewhere it does nothing
    keystone-node wait-ready  until this node's API answers (bounded)
    keystone-node key-digest  a digest of each key repository, to compare across nodes
                              and regions (a drift check: they must all be equal)
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

FACTS = "/etc/keystone-multiregion/node.json"
KEY_DIRS = ("/etc/keystone/fernet-keys", "/etc/keystone/credential-keys")
ADMIN_PASSWORD_FILE = "/etc/keystone/bootstrap-admin-password"
CONFIG = "/etc/keystone/keystone.conf"


def facts():
    with open(FACTS) as fh:
        return json.load(fh)


def cmd_prepare(args):
    import grp
    import pwd
    uid, gid = pwd.getpwnam("keystone").pw_uid, grp.getgrnam("keystone").gr_gid
    for d in KEY_DIRS:
        os.chown(d, uid, gid)
        os.chmod(d, 0o700)
        for name in os.listdir(d):
            path = os.path.join(d, name)
            os.chown(path, uid, gid)
            os.chmod(path, 0o600)
    os.chown(CONFIG, 0, gid)
    os.chmod(CONFIG, 0o640)
    for d in ("/var/log/keystone", "/var/lib/keystone"):
        os.makedirs(d, exist_ok=True)
        os.chown(d, uid, gid)
    return 0


def _manage(*argv, env=None, timeout=600):
    out = subprocess.run(["keystone-manage", "--config-file", CONFIG, *argv], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"keystone-manage {argv[0]} failed: {out.stderr.strip()[-2000:]}")
    return out


def cmd_bootstrap(args):
    node = facts()
    if not node.get("keystone_bootstrap"):
        print(json.dumps({"node": node["name"], "bootstrap": "not this node"}))
        return 0
    deadline = time.monotonic() + args.timeout
    while True:  # the database may still be forming: retry, bounded by --timeout
        try:
            t = time.monotonic()
            _manage("db_sync")
            synced = round(time.monotonic() - t, 1)
            break
        except RuntimeError as exc:
            if time.monotonic() > deadline:
                print(f"keystone-node: {exc}", file=sys.stderr)
                return 1
            time.sleep(3)
    with open(ADMIN_PASSWORD_FILE) as fh:
        password = fh.read().strip()
    t = time.monotonic()
    # The password travels in the environment, never on a command line.
    _manage("bootstrap", "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
            "--bootstrap-role-name", "admin", "--bootstrap-region-id", node["region"],
            env={"OS_BOOTSTRAP_PASSWORD": password})
    print(json.dumps({"node": node["name"], "db_sync_s": synced, "bootstrap_s": round(time.monotonic() - t, 1)}))
    return 0


def cmd_wait_ready(args):
    node = facts()
    url = f"http://{node['address']}:5000/v3"
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return 0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    print(f"keystone-node: {url} did not answer within {args.timeout}s", file=sys.stderr)
    return 1


def repository_digest(files):
    """sha256 over the repository's `name:key` lines in name order (keys.digest, the same)."""
    lines = "".join(f"{name}:{files[name].strip()}\n" for name in sorted(files, key=int))
    return hashlib.sha256(lines.encode()).hexdigest()


def cmd_key_digest(args):
    out = {}
    for d in KEY_DIRS:
        files = {}
        for name in os.listdir(d):
            with open(os.path.join(d, name)) as fh:
                files[name] = fh.read()
        out[os.path.basename(d)] = repository_digest(files)
    print(json.dumps(out, sort_keys=True))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="keystone-node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare")
    sub.add_parser("key-digest")
    for name in ("bootstrap", "wait-ready"):
        p = sub.add_parser(name)
        p.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    return {"prepare": cmd_prepare, "bootstrap": cmd_bootstrap, "wait-ready": cmd_wait_ready,
            "key-digest": cmd_key_digest}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
