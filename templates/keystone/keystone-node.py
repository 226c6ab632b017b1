#!/usr/bin/env python3
"""keystone-node: prepare and bootstrap this Keystone API node.

Shipped by keystone-multiregion to every Keystone node (cloud-init writes it to
/usr/local/sbin/keystone-node); the local lab runs the very same file. Standard library
only. Reads the node's facts from /etc/keystone-multiregion/node.json.

    keystone-node prepare       key directories owned by keystone (0700), config 0640;
                                then marks the node ready to receive keys
    keystone-node install-keys  read the Fernet and credential key repositories (JSON on
                                stdin, from the region stack's push over SSH) and install
                                them file by file, atomically; refuse a repository whose
                                primary key this node never held (a rotation that skipped
                                one), print the new digests
    keystone-node credential-migrate
                                re-encrypt every credential (TOTP secrets) with the primary
                                credential key (`keystone-manage credential_migrate`): once,
                                on one node, after a credential rotation reached every region
    keystone-node key-check     drift check: exit 1 if a repository differs from what was
                                last pushed (a systemd timer runs it; see the journal)
    keystone-node key-digest    a digest of each key repository, to compare across nodes
                                and regions (they must all be equal)
    keystone-node bootstrap     on the bootstrap node only: wait for the keys and the database, then
                                `keystone-manage db_sync` and `keystone-manage bootstrap`
                                (both safe to run again); elsewhere it does nothing
    keystone-node wait-ready    until this node's API answers (bounded)
"""

import argparse
import base64
import binascii
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

FACTS = "/etc/keystone-multiregion/node.json"
KEY_DIRS = {"fernet_keys": "/etc/keystone/fernet-keys", "credential_keys": "/etc/keystone/credential-keys"}
# Written by install-keys after the keys: what the node should hold (key-check compares),
# and the file keystone-api.path waits for before it starts the API.
# The stack setting that counts each repository's rotations (for messages).
SETTING = {"fernet_keys": "fernetRotations", "credential_keys": "credentialRotations"}
PUSHED = "/var/lib/keystone-multiregion/key-digests.json"
PREPARED = "/var/lib/keystone-multiregion/prepared"
ADMIN_PASSWORD_FILE = "/etc/keystone/bootstrap-admin-password"
CONFIG = "/etc/keystone/keystone.conf"


def facts():
    with open(FACTS) as fh:
        return json.load(fh)


def _keystone_ids():
    import grp
    import pwd
    return pwd.getpwnam("keystone").pw_uid, grp.getgrnam("keystone").gr_gid


def cmd_prepare(args):
    uid, gid = _keystone_ids()
    for d in KEY_DIRS.values():
        os.makedirs(d, exist_ok=True)
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
    os.makedirs(os.path.dirname(PREPARED), exist_ok=True)
    with open(PREPARED, "w") as fh:
        fh.write("prepared\n")
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
    # keystone-manage bootstrap needs the Fernet keys: wait for the stack's push (bounded).
    while not os.path.exists(PUSHED):
        if time.monotonic() > deadline:
            print(f"keystone-node: no keys were pushed within {args.timeout}s ({PUSHED} is missing); run "
                  "`pulumi up` on this region's stack, then `keystone-node bootstrap` again", file=sys.stderr)
            return 1
        time.sleep(2)
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


def read_repository(d):
    """{file name: key} of the numbered files in a key directory ({} if there is none)."""
    out = {}
    if os.path.isdir(d):
        for name in os.listdir(d):
            if name.isdigit():
                with open(os.path.join(d, name)) as fh:
                    out[name] = fh.read().strip()
    return out


def current_digests():
    return {repo: repository_digest(read_repository(d)) for repo, d in sorted(KEY_DIRS.items())}


def payload_problem(data):
    """Why a pushed payload is not a pair of key repositories, or None."""
    if not isinstance(data, dict) or set(data) != set(KEY_DIRS):
        return f"expected exactly the repositories {sorted(KEY_DIRS)}"
    for repo, keys in data.items():
        if not isinstance(keys, dict) or "0" not in keys or len(keys) < 2:
            return f"{repo}: needs a staged key '0' and at least one more"
        for name, key in keys.items():
            if not (isinstance(name, str) and name.isdigit() and str(int(name)) == name):
                return f"{repo}: file name {name!r} is not a key number"
            try:
                if not isinstance(key, str) or len(base64.urlsafe_b64decode(key.encode())) != 32:
                    return f"{repo}/{name}: not a Fernet key (URL-safe base64 of 32 bytes)"
            except (binascii.Error, ValueError):
                return f"{repo}/{name}: not a Fernet key (URL-safe base64 of 32 bytes)"
    return None


def transition_problem(repo, current, new):
    """Why replacing `current` with `new` could break validation, or None. The new primary
    (the highest-numbered key: it signs from now on) must already be on this node, as the
    staged key of the previous rotation, so that every region could validate with it
    before any region signed with it. An empty node (first push) takes any repository."""
    if not current or current == new:
        return None
    top = str(max(int(n) for n in new))
    if new[top] not in current.values():
        return (f"{repo}: the new primary key (file {top}) is not in this node's repository, so it was never "
                f"staged here; roll out the previous rotation ({SETTING[repo]} one lower) to every region "
                "first, then this one")
    return None


def write_repository(d, new, ids):
    """Install `new` into directory `d` file by file with atomic renames, highest number
    first: the new primary appears before the old staged key "0" is replaced, and the
    dropped keys go last, so Keystone reading the directory meanwhile always finds keys
    that validate both old and new tokens."""
    os.makedirs(d, mode=0o700, exist_ok=True)
    current = read_repository(d)
    for name in sorted(new, key=int, reverse=True):
        if current.get(name) == new[name]:
            continue
        tmp = os.path.join(d, f".{name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new[name] + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if ids:
            os.chown(tmp, *ids)
        os.replace(tmp, os.path.join(d, name))
    for name in current:
        if name not in new:
            os.unlink(os.path.join(d, name))


def _hashes(key):
    """Keystone's key_hash of credentials encrypted with `key`: sha1 of the primary key as
    read from its file (with or without the trailing newline a file may have)."""
    return {hashlib.sha1(k.encode()).hexdigest() for k in (key, key + "\n")}


def credential_hashes_in_use():
    """{key_hash: number of credentials} in Keystone's database, through keystone.conf's
    own connection (TLS as configured there). Needs Keystone's PyMySQL (python3-pymysql)."""
    import configparser
    import urllib.parse

    import pymysql
    conf = configparser.ConfigParser(interpolation=None)
    conf.read(CONFIG)
    url = urllib.parse.urlsplit(conf["database"]["connection"])
    query = dict(urllib.parse.parse_qsl(url.query))
    ssl = None
    if "ssl_ca" in query:
        ssl = {"ca": query["ssl_ca"], "check_hostname": query.get("ssl_check_hostname", "true").lower() != "false"}
    conn = pymysql.connect(host=url.hostname, port=url.port or 3306, user=urllib.parse.unquote(url.username),
                           password=urllib.parse.unquote(url.password or ""), database=url.path.lstrip("/"),
                           ssl=ssl, connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT key_hash, COUNT(*) FROM credential GROUP BY key_hash")
            return {h: int(n) for h, n in cur.fetchall()}
    finally:
        conn.close()


def credential_problem(current, new, in_use):
    """Why installing the credential repository `new` would strand credentials: a key it
    drops still encrypts some (they could never be decrypted again), or None."""
    dropped = [k for k in current.values() if k not in new.values()]
    stranded = sum(in_use.get(h, 0) for k in dropped for h in _hashes(k))
    if stranded:
        return (f"credential_keys: {stranded} credential(s) (TOTP secrets) are still encrypted with a key this "
                "repository drops and could never be read again; run `keystone-node credential-migrate` on one "
                "Keystone node (once the previous credential rotation has reached every region), then push again")
    return None


def cmd_install_keys(args):
    deadline = time.monotonic() + args.timeout
    # The push may arrive while cloud-init is still installing Keystone: wait for prepare.
    while not os.path.exists(PREPARED):
        if time.monotonic() > deadline:
            print(f"keystone-node: {PREPARED} did not appear within {args.timeout}s: `keystone-node prepare` "
                  "has not run (is cloud-init still installing, or did it fail? see cloud-init status)",
                  file=sys.stderr)
            return 1
        time.sleep(2)
    try:
        data = json.load(sys.stdin)
    except ValueError as exc:
        print(f"keystone-node: the pushed keys are not JSON ({exc})", file=sys.stderr)
        return 2
    problem = payload_problem(data)
    if problem:
        print(f"keystone-node: refused: the pushed keys are malformed: {problem}", file=sys.stderr)
        return 2
    problems = [p for p in (transition_problem(repo, read_repository(KEY_DIRS[repo]), data[repo])
                            for repo in sorted(data)) if p]
    current = read_repository(KEY_DIRS["credential_keys"])
    if not problems and set(current.values()) - set(data["credential_keys"].values()):
        # A credential rotation drops a key: only if no credential is still encrypted with it.
        try:
            problem = credential_problem(current, data["credential_keys"], credential_hashes_in_use())
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot tell": refuse
            problem = (f"credential_keys: this repository drops a key, and whether credentials still use it "
                       f"could not be checked ({type(exc).__name__}: {exc})")
        if problem:
            problems.append(problem)
    if problems and not args.force:
        for p in problems:
            print(f"keystone-node: refused: {p} (nothing was changed)", file=sys.stderr)
        return 2
    ids = _keystone_ids()
    for repo in sorted(data):
        write_repository(KEY_DIRS[repo], data[repo], ids)
    digests = current_digests()
    expected = {repo: repository_digest(keys) for repo, keys in sorted(data.items())}
    if digests != expected:
        print(f"keystone-node: after the install the repositories read back {digests}, expected {expected}",
              file=sys.stderr)
        return 1
    tmp = PUSHED + ".tmp"
    os.makedirs(os.path.dirname(PUSHED), exist_ok=True)
    with open(tmp, "w") as fh:
        json.dump(expected, fh, sort_keys=True)
    os.replace(tmp, PUSHED)
    print(json.dumps(digests, sort_keys=True))
    return 0


def cmd_credential_migrate(args):
    t = time.monotonic()
    _manage("credential_migrate", "--keystone-user", "keystone", "--keystone-group", "keystone", timeout=args.timeout)
    primary = read_repository(KEY_DIRS["credential_keys"])
    primary = primary[str(max(int(n) for n in primary))]
    in_use = credential_hashes_in_use()
    with_primary = sum(in_use.get(h, 0) for h in _hashes(primary))
    print(json.dumps({"credentials": sum(in_use.values()), "with_primary_key": with_primary,
                      "seconds": round(time.monotonic() - t, 1)}))
    return 0 if with_primary == sum(in_use.values()) else 1


def cmd_key_check(args):
    try:
        with open(PUSHED) as fh:
            expected = json.load(fh)
    except (OSError, ValueError):
        print(f"keystone-node: no keys were pushed to this node ({PUSHED} is missing); run `pulumi up` "
              "on this region's stack", file=sys.stderr)
        return 1
    found = current_digests()
    drifted = [repo for repo in sorted(set(expected) | set(found)) if expected.get(repo) != found.get(repo)]
    if drifted:
        try:
            command = f"keys-{facts()['name']}"
        except (OSError, ValueError, KeyError):
            command = "keys-<node>"
    for repo in drifted:
        print(f"keystone-node: DRIFT: {KEY_DIRS.get(repo, repo)} differs from what the stack pushed "
              f"(expected {expected.get(repo)}, found {found.get(repo)}); push the keys again with "
              f"`pulumi up --target <URN of {command}> --replace` on this region's stack "
              "(`pulumi stack --show-urns` lists it)", file=sys.stderr)
    if not drifted:
        print(json.dumps({"keys": "as pushed", **found}, sort_keys=True))
    return 1 if drifted else 0


def cmd_key_digest(args):
    print(json.dumps(current_digests(), sort_keys=True))
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="keystone-node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "key-digest", "key-check"):
        sub.add_parser(name)
    for name in ("bootstrap", "wait-ready", "credential-migrate"):
        p = sub.add_parser(name)
        p.add_argument("--timeout", type=float, default=1800)
    p = sub.add_parser("install-keys")
    p.add_argument("--timeout", type=float, default=1800, help="how long to wait for `prepare` (seconds)")
    p.add_argument("--force", action="store_true",
                   help="install even a repository whose primary key this node never held")
    args = parser.parse_args(argv)
    return {"prepare": cmd_prepare, "bootstrap": cmd_bootstrap, "wait-ready": cmd_wait_ready,
            "install-keys": cmd_install_keys, "key-check": cmd_key_check,
            "credential-migrate": cmd_credential_migrate,
            "key-digest": cmd_key_digest}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
