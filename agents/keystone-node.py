#!/usr/bin/env python3
"""keystone-node: prepare and bootstrap this Keystone API node.

Shipped by keystone-multiregion to every Keystone node (cloud-init writes it to
/usr/local/sbin/keystone-node); the local lab runs the very same file. Standard library
only. Reads the node's facts from /etc/keystone-multiregion/node.json.

    keystone-node prepare       key directories root:keystone 0750 (Keystone reads them,
                                only root writes them), config 0640; then marks the node
                                ready to receive keys
    keystone-node install-keys  read the Fernet and credential key repositories (JSON on
                                stdin, from the region stack's push over SSH) and install
                                them file by file, atomically; refuse a repository whose
                                primary key this node never held (a rotation that skipped
                                one) or that lacks this node's primary (more than one
                                rotation back), print the new digests; --import-digest
                                REPO=SHA256 accepts an imported repository with that digest
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
    keystone-node import-db [--replace] [--dump FILE]
                                moving an existing Keystone in: load a mariadb-dump of its
                                keystone database (stdin, or a root-only FILE) through
                                keystone.conf's TLS connection, then `keystone-manage db_sync`;
                                refuses a database that already holds identity data unless
                                --replace, a dump Galera cannot replicate, and anything not a
                                single-database dump, before changing anything
    keystone-node flush-cache   flush_all on this region's memcached servers (keystone.conf
                                [cache]): after an import, once per region
"""

import argparse
import base64
import binascii
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

FACTS = "/etc/keystone-multiregion/node.json"
# keystone-manage with the TLS-or-nothing database driver, and that driver's module.
KEYSTONE_MANAGE = "/usr/local/bin/keystone-manage"
DBTLS_MODULE = "/usr/local/lib/keystone-multiregion/keystone_dbtls.py"
KEY_DIRS = {"fernet_keys": "/etc/keystone/fernet-keys", "credential_keys": "/etc/keystone/credential-keys"}
# Written by install-keys after the keys: what the node should hold (key-check compares),
# and the file keystone-api.path waits for before it starts the API.
# The stack setting that counts each repository's rotations (for messages).
SETTING = {"fernet_keys": "fernetRotations", "credential_keys": "credentialRotations"}
PUSHED = "/var/lib/keystone-multiregion/key-digests.json"
PREPARED = "/var/lib/keystone-multiregion/prepared"
# Held by install-keys from reading the node's keys to recording what it installed: two
# pushes never interleave. In root's own directory, never in one Keystone can write.
LOCK = "/var/lib/keystone-multiregion/install-keys.lock"
# A key file's name in a pushed repository: a plain ASCII number (str.isdigit() would take
# '²' or '١' too).
KEY_NAME = re.compile(r"0|[1-9][0-9]*")
ADMIN_PASSWORD_FILE = "/etc/keystone/bootstrap-admin-password"
CONFIG = "/etc/keystone/keystone.conf"


def facts():
    with open(FACTS) as fh:
        return json.load(fh)


def _keystone_ids():
    import grp
    import pwd
    return pwd.getpwnam("keystone").pw_uid, grp.getgrnam("keystone").gr_gid


def _keystone_gid():
    return _keystone_ids()[1]


class KeyDirError(Exception):
    """A key directory this tool will not touch (the message says why and what to do)."""


# Keys live in directories only root can write: Keystone (group keystone) reads them, and
# needs no more (it validates the repository as readable; only keystone-manage
# fernet_rotate/fernet_setup want to write, and nodes never rotate). Their parent,
# /etc/keystone, belongs to the keystone user (Debian's package), so a key directory's path
# is in that user's hands: every operation goes through the directory's own descriptor,
# opened without following a symbolic link and checked to be root's.
DIR_MODE, FILE_MODE = 0o750, 0o640


def open_key_dir(d, gid, create=True):
    """A descriptor of key directory `d`, checked to be root's alone (this process's user's)
    and then set to root:`gid` DIR_MODE. None if it does not exist and `create` is false."""
    if create:
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            pass
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if create:
            raise
        return None
    except (NotADirectoryError, OSError) as exc:
        if os.path.islink(d):
            raise KeyDirError(f"{d} is a symbolic link, not a directory: remove it and run `keystone-node "
                              "prepare`") from None
        raise KeyDirError(f"{d} cannot be opened as a directory ({exc})") from None
    st = os.fstat(fd)
    problem = None
    if st.st_uid != os.geteuid():
        problem = f"belongs to uid {st.st_uid}, not root"
    elif st.st_mode & 0o022:
        problem = f"is writable by its group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem:
        os.close(fd)
        raise KeyDirError(f"{d} {problem}: a key directory must be root's alone; run `keystone-node prepare` "
                          "(root:keystone 0750) and push again")
    if gid is not None:
        os.fchown(fd, -1, gid)
        os.fchmod(fd, DIR_MODE)
    return fd


def cmd_prepare(args):
    uid, gid = _keystone_ids()
    for d in KEY_DIRS.values():
        # Directories the package or an earlier layout left to keystone become root's; a
        # link in their place is removed (never followed) and a directory made.
        if os.path.islink(d):
            os.unlink(d)
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            pass
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchown(fd, 0, gid)
            os.fchmod(fd, DIR_MODE)
            for name in os.listdir(fd):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    os.unlink(name, dir_fd=fd)  # never a key; whatever it points to stays as it is
                elif stat.S_ISREG(st.st_mode):
                    _own(name, fd, gid, FILE_MODE)
        finally:
            os.close(fd)
    # keystone.conf sits in keystone's /etc/keystone: never follow a link planted there.
    _own(CONFIG, None, gid, 0o640)
    for d in ("/var/log/keystone", "/var/lib/keystone"):
        os.makedirs(d, exist_ok=True)
        os.chown(d, uid, gid)
    os.makedirs(os.path.dirname(PREPARED), exist_ok=True)
    with open(PREPARED, "w") as fh:
        fh.write("prepared\n")
    return 0


def _manage(*argv, env=None, timeout=600):
    # Our keystone-manage (/usr/local/bin): it loads the TLS-or-nothing database driver.
    out = subprocess.run([KEYSTONE_MANAGE, "--config-file", CONFIG, *argv], capture_output=True, text=True,
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
    done = bootstrap_marker()
    if done:
        # A rebuilt node (or a second run) never touches the admin account: bootstrap would
        # re-enable admin and reset its password.
        forget_admin_password()
        print(json.dumps({"node": node["name"], "db_sync_s": synced, "bootstrap": "done before", **done}))
        return 0
    with open(ADMIN_PASSWORD_FILE) as fh:
        password = fh.read().strip()
    if not password:
        print(f"keystone-node: {ADMIN_PASSWORD_FILE} is empty and the database holds no bootstrap marker: "
              "restore the file from the shared stack's keystone_admin_password and run again", file=sys.stderr)
        return 1
    t = time.monotonic()
    # The password travels in the environment, never on a command line.
    _manage("bootstrap", "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
            "--bootstrap-role-name", "admin", "--bootstrap-region-id", node["region"],
            env={"OS_BOOTSTRAP_PASSWORD": password})
    record_bootstrap(node)
    forget_admin_password()
    print(json.dumps({"node": node["name"], "db_sync_s": synced, "bootstrap_s": round(time.monotonic() - t, 1)}))
    return 0


# The deployment's bootstrap is recorded in its database (replicated everywhere), never on a
# VM: whichever node runs `bootstrap` later, on a rebuilt VM or by hand, finds it and skips.
BOOTSTRAP_TABLE = "keystone_multiregion_bootstrap"


def bootstrap_marker(connect=None):
    """The recorded bootstrap ({"at", "by", "deployment"}), or None."""
    conn = (connect or db_connect)()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {BOOTSTRAP_TABLE} (deployment VARCHAR(64) NOT NULL PRIMARY KEY, "
                        "at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, node VARCHAR(64) NOT NULL) ENGINE=InnoDB")
            cur.execute(f"SELECT deployment, at, node FROM {BOOTSTRAP_TABLE}")
            row = cur.fetchone()
            return {"deployment": row[0], "at": str(row[1]), "by": row[2]} if row else None
    finally:
        conn.close()


def record_bootstrap(node, connect=None):
    conn = (connect or db_connect)()
    try:
        with conn.cursor() as cur:
            cur.execute(f"INSERT IGNORE INTO {BOOTSTRAP_TABLE} (deployment, node) VALUES (%s, %s)",
                        (node.get("deployment", ""), node["name"]))
    finally:
        conn.close()


def forget_admin_password():
    """The bootstrap password file is not left on the node once the deployment has an admin."""
    try:
        os.unlink(ADMIN_PASSWORD_FILE)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        # bind-mounted in place (the lab): emptied instead
        with open(ADMIN_PASSWORD_FILE, "w"):
            pass


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


def _own(name, dir_fd, gid, mode):
    """root:`gid` `mode` on a regular file, through its descriptor (never a link's target)."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KeyDirError(f"{name} is not a regular file")
        os.fchown(fd, 0, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _keystone_key_number(name):
    """The key number Keystone reads from a file name (its int()), or None if it skips the file."""
    try:
        return int(name)
    except ValueError:
        return None


def repository_digest(files):
    """sha256 over the repository's `name:key` lines in name order (keys.digest, the same)."""
    lines = "".join(f"{name}:{files[name].strip()}\n" for name in sorted(files, key=_keystone_key_number))
    return hashlib.sha256(lines.encode()).hexdigest()


def _read_entries(fd, d):
    """{file name: key} of the files Keystone would load from the directory open as `fd`:
    every name its int() accepts (a stray '١' is key 1 to Keystone, so it counts here too
    and shows as drift)."""
    out = {}
    for name in os.listdir(fd):
        if _keystone_key_number(name) is None:
            continue
        try:
            kfd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        except OSError as exc:
            raise KeyDirError(f"{os.path.join(d, name)} cannot be read as a key file ({exc.strerror})") from None
        with os.fdopen(kfd) as fh:
            if not stat.S_ISREG(os.fstat(kfd).st_mode):
                raise KeyDirError(f"{os.path.join(d, name)} is not a regular file")
            out[name] = fh.read().strip()
    return out


def read_repository(d):
    """{file name: key} of the numbered files in a key directory ({} if there is none)."""
    fd = open_key_dir(d, None, create=False)
    if fd is None:
        return {}
    try:
        return _read_entries(fd, d)
    finally:
        os.close(fd)


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
            if not (isinstance(name, str) and KEY_NAME.fullmatch(name)):
                return f"{repo}: file name {name!r} is not a key number (ASCII digits 0-9, no leading zero)"
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
    before any region signed with it. And the new repository must hold this node's current
    primary, which the nodes not yet pushed to keep signing with: one rotation back (the
    roll-back) does, as its staged key; two or more back do not. An empty node (first
    push) takes any repository."""
    if not current or current == new:
        return None
    top = str(max(int(n) for n in new))
    if new[top] not in current.values():
        return (f"{repo}: the new primary key (file {top}) is not in this node's repository, so it was never "
                f"staged here; roll out the previous rotation ({SETTING[repo]} one lower) to every region "
                "first, then this one")
    held = max(current, key=_keystone_key_number)
    if current[held] not in new.values():
        return (f"{repo}: the pushed repository lacks this node's current primary key (file {held}): it goes back "
                "more than one rotation, and this node could no longer validate what the others sign; roll back "
                f"one rotation at a time ({SETTING[repo]} one lower per push, to every region)")
    return None


def write_repository(d, new, gid):
    """Install `new` into directory `d` file by file with atomic renames, highest number
    first: the new primary appears before the old staged key "0" is replaced, and the
    dropped keys go last, so Keystone reading the directory meanwhile always finds keys
    that validate both old and new tokens. Each file is made with a fresh name (mkstemp:
    O_EXCL, never through a link), owned and moded through its descriptor, root:`gid`
    FILE_MODE, in the directory open_key_dir checked."""
    fd = open_key_dir(d, gid)
    try:
        here = f"/proc/self/fd/{fd}"  # the checked directory itself, whatever its path points to now
        current = _read_entries(fd, d)
        for name in sorted(new, key=int, reverse=True):
            if current.get(name) == new[name]:
                continue
            kfd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=here)
            try:
                os.fchown(kfd, -1, gid)  # mkstemp made it ours (root's), 0600
                os.fchmod(kfd, FILE_MODE)
                with os.fdopen(kfd, "w") as fh:
                    fh.write(new[name] + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(os.path.basename(tmp), name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                try:
                    os.unlink(os.path.basename(tmp), dir_fd=fd)
                except FileNotFoundError:
                    pass
                raise
        for name in current:
            if name not in new:
                os.unlink(name, dir_fd=fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def _hashes(key):
    """Keystone's key_hash of credentials encrypted with `key`: sha1 of the primary key as
    read from its file (with or without the trailing newline a file may have)."""
    return {hashlib.sha1(k.encode()).hexdigest() for k in (key, key + "\n")}


def db_connect():
    """Keystone's database through keystone.conf's own connection: TLS or nothing
    (keystone_dbtls), the server checked against the Galera CA. Needs Keystone's PyMySQL
    (python3-pymysql)."""
    import configparser
    import urllib.parse

    sys.dont_write_bytecode = True  # no __pycache__ beside the shipped module
    sys.path.insert(0, os.path.dirname(DBTLS_MODULE))
    import keystone_dbtls
    conf = configparser.ConfigParser(interpolation=None)
    # Read as root from keystone's /etc/keystone: only root's own file, never through a link.
    with os.fdopen(os.open(CONFIG, os.O_RDONLY | os.O_NOFOLLOW)) as fh:
        owner = os.fstat(fh.fileno()).st_uid
        if owner != os.geteuid():
            raise RuntimeError(f"{CONFIG} belongs to uid {owner}, not root (run `keystone-node prepare`)")
        conf.read_file(fh)
    url = urllib.parse.urlsplit(conf["database"]["connection"])
    query = dict(urllib.parse.parse_qsl(url.query))
    ssl = None
    if "ssl_ca" in query:
        ssl = {"ca": query["ssl_ca"], "check_hostname": query.get("ssl_check_hostname", "true").lower() != "false"}
    return keystone_dbtls.connect(host=url.hostname, port=url.port or 3306, user=urllib.parse.unquote(url.username),
                                  password=urllib.parse.unquote(url.password or ""),
                                  database=url.path.lstrip("/"), ssl=ssl, connect_timeout=10, autocommit=True)


def credential_hashes_in_use():
    """{key_hash: number of credentials} in Keystone's database."""
    conn = db_connect()
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
    os.makedirs(os.path.dirname(LOCK), exist_ok=True)
    lock = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(lock, 0o600)  # whoever can open it could hold it and stall every push
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    print(f"keystone-node: another install-keys holds {LOCK} (still running after {args.timeout}s); "
                          "nothing was changed, push again once it has finished", file=sys.stderr)
                    return 1
                time.sleep(0.1)
        try:
            return _install_locked(data, args.force, _import_digests(args.import_digest))
        except KeyDirError as exc:
            print(f"keystone-node: refused: {exc} (nothing was changed)", file=sys.stderr)
            return 2
    finally:
        os.close(lock)  # releases the lock


def _install_locked(data, force, imports=None):
    problems = []
    for repo in sorted(data):
        p = transition_problem(repo, read_repository(KEY_DIRS[repo]), data[repo])
        if p and (imports or {}).get(repo) == repository_digest(data[repo]):
            # Moving an existing Keystone in: its repositories replace this deployment's
            # wholesale (the stack names them by digest); the credential check still applies.
            print(f"keystone-node: {repo}: installed as the imported repository (digest "
                  f"{imports[repo][:12]}...), replacing this node's keys", file=sys.stderr)
        elif p:
            problems.append(p)
    current = read_repository(KEY_DIRS["credential_keys"])
    dropped = set(current.values()) - set(data["credential_keys"].values())
    if dropped and force:
        print(f"keystone-node: --force: skipped the credential check: this repository drops {len(dropped)} "
              "credential key(s); whether credentials are still encrypted with them was not checked (those "
              "would never be readable again: `keystone-node credential-migrate` first if unsure)", file=sys.stderr)
    elif dropped and not problems:
        # A credential rotation drops a key: only if no credential is still encrypted with it.
        try:
            problem = credential_problem(current, data["credential_keys"], credential_hashes_in_use())
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot tell": refuse
            problem = (f"credential_keys: this repository drops a key, and whether credentials still use it "
                       f"could not be checked ({type(exc).__name__}: {exc})")
        if problem:
            problems.append(problem)
    for p in problems:
        if force:
            print(f"keystone-node: --force: installing although: {p}", file=sys.stderr)
        else:
            print(f"keystone-node: refused: {p} (nothing was changed)", file=sys.stderr)
    if problems and not force:
        return 2
    # Both directories are checked before either changes: a refusal changes nothing.
    gid = _keystone_gid()
    for d in KEY_DIRS.values():
        os.close(open_key_dir(d, gid))
    for repo in sorted(data):
        write_repository(KEY_DIRS[repo], data[repo], gid)
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


def _import_digests(values):
    out = {}
    for value in values or ():
        repo, _, digest = value.partition("=")
        if repo not in KEY_DIRS or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise SystemExit(f"keystone-node: --import-digest {value!r}: expected REPOSITORY=SHA256 with REPOSITORY "
                             f"one of {sorted(KEY_DIRS)}")
        out[repo] = digest
    return out


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


# -- moving an existing Keystone in: its database dump --------------------------------
# A table without a primary key: Galera replicates its rows badly (a DELETE or UPDATE is
# applied row by row by a full scan on every other node) or not at all.
_CREATE = re.compile(r"CREATE TABLE `([^`]+)`", re.I)
_ENGINE = re.compile(r"\bENGINE=(\w+)", re.I)
# Engines Galera does not replicate (MyISAM and Aria only with an experimental setting):
# converted to InnoDB, each conversion reported.
_CONVERT_ENGINES = {"myisam", "aria"}
# Keystone's tables that say a dump is Keystone's.
_KEYSTONE_TABLES = ("user", "project", "assignment", "credential")
# What counts as identity data in the target (a database with none of it is "empty"):
# users, projects (not the root of domains), role assignments, credentials.
_IDENTITY_COUNTS = (("users", "SELECT COUNT(*) FROM user"),
                    ("projects", "SELECT COUNT(*) FROM project WHERE is_domain = 0"),
                    ("role assignments", "SELECT COUNT(*) FROM assignment"),
                    ("credentials", "SELECT COUNT(*) FROM credential"))
DUMP_HOW = "mariadb-dump --single-transaction --skip-lock-tables keystone > keystone.sql"


class DumpError(ValueError):
    pass


def dump_statements(lines):
    """Split a mariadb-dump's lines into statements (mariadb-dump ends each one with ';' at the
    end of a line, and writes a newline inside a value as \\n, so a line never ends inside a
    string). Comments and blank lines go."""
    statements, current = [], []
    for line in lines:
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("--")):
            continue
        current.append(line.rstrip("\n"))
        if stripped.endswith(";"):
            statements.append("\n".join(current))
            current = []
    if current:
        raise DumpError("the dump ends inside a statement (it is truncated): dump again with `" + DUMP_HOW + "`")
    return statements


def prepare_dump(lines):
    """The statements to run and the notes on what was changed, or DumpError (one line naming
    what is wrong and how to dump instead). Only a dump of one database loads: it goes into
    keystone.conf's database, whatever the source called it. Tables must be InnoDB (MyISAM and
    Aria are converted, each named in the notes) with a primary key; LOCK TABLES is left out
    (Galera does not replicate explicit locks); sql_log_bin=0 is refused (nothing would
    replicate)."""
    out, notes, tables = [], [], []
    for st in dump_statements(lines):
        head = st.lstrip().upper()
        if head.startswith(("LOCK TABLES", "UNLOCK TABLES")):
            continue
        if head.startswith(("USE ", "CREATE DATABASE", "/*!40000 DROP DATABASE", "DROP DATABASE")) or \
                head.startswith("/*!32312 IF NOT EXISTS*/") or re.match(r"/\*!\d+ CREATE DATABASE", head):
            raise DumpError("the dump names databases (USE / CREATE DATABASE: made with --databases or "
                            "--all-databases); dump the one database instead: `" + DUMP_HOW + "`")
        if head.startswith("DELIMITER") or re.search(r"\bCREATE\b.*\b(TRIGGER|PROCEDURE|FUNCTION|EVENT)\b", head[:200]):
            raise DumpError("the dump holds triggers, routines or events, which Keystone's database has none of; "
                            "dump the tables only: `" + DUMP_HOW + "`")
        if re.search(r"SQL_LOG_BIN\s*=\s*0", head):
            raise DumpError("the dump turns the binary log off (SET sql_log_bin=0), so Galera would replicate "
                            "none of it; dump again without it: `" + DUMP_HOW + "`")
        m = _CREATE.match(st.lstrip())
        if m:
            table = m.group(1)
            tables.append(table)
            if not re.search(r"^\s*PRIMARY KEY\s*\(", st, re.M):
                raise DumpError(f"table {table} has no primary key, which Galera needs to replicate its rows; add "
                                f"one in the source (ALTER TABLE {table} ADD PRIMARY KEY (...)) and dump again")
            engine = _ENGINE.search(st)
            if engine and engine.group(1).lower() != "innodb":
                if engine.group(1).lower() not in _CONVERT_ENGINES:
                    raise DumpError(f"table {table} uses ENGINE={engine.group(1)}, which Galera does not "
                                    f"replicate; ALTER TABLE {table} ENGINE=InnoDB in the source and dump again")
                notes.append(f"table {table}: ENGINE={engine.group(1)} converted to InnoDB (Galera replicates "
                             "InnoDB only)")
                st = st[:engine.start()] + "ENGINE=InnoDB" + st[engine.end():]
        out.append(st)
    missing = [t for t in _KEYSTONE_TABLES if t not in tables]
    if missing:
        raise DumpError(f"this is not a dump of Keystone's database (no table {', '.join(missing)}); dump the "
                        "source's keystone database: `" + DUMP_HOW + "`")
    return out, notes, tables


def _read_dump(path):
    """The dump's lines: from a file only root can read and write (it holds password hashes
    and encrypted credentials), or stdin."""
    if path is None:
        return sys.stdin.read().splitlines(keepends=True)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd) as fh:
        st = os.fstat(fd)
        if st.st_uid != 0 or st.st_mode & 0o077:
            raise DumpError(f"--dump {path}: must be root's alone (owner uid {st.st_uid}, mode "
                            f"{stat.S_IMODE(st.st_mode):04o}): chown root {path} && chmod 0600 {path}, or pipe it on "
                            "stdin")
        return fh.read().splitlines(keepends=True)


def identity_counts(cur):
    """{what: count} of the identity data in the connected database ({} when it has no tables)."""
    cur.execute("SHOW TABLES")
    present = {row[0] for row in cur.fetchall()}
    counts = {}
    for what, query in _IDENTITY_COUNTS:
        table = query.split(" FROM ")[1].split()[0]
        if table in present:
            cur.execute(query)
            counts[what] = int(cur.fetchone()[0])
    return counts


def cmd_import_db(args, connect=None, manage=None):
    t0 = time.monotonic()
    try:
        statements, notes, tables = prepare_dump(_read_dump(args.dump))
    except (DumpError, OSError) as exc:
        print(f"keystone-node: refused: {exc} (nothing was changed)", file=sys.stderr)
        return 2
    conn = (connect or db_connect)()
    try:
        with conn.cursor() as cur:
            counts = identity_counts(cur)
            held = {k: v for k, v in counts.items() if v}
            if held and not args.replace:
                print("keystone-node: refused: the keystone database already holds identity data ("
                      + ", ".join(f"{v} {k}" for k, v in held.items()) + "); give --replace to drop every "
                      "table of it and load the dump instead (nothing was changed)", file=sys.stderr)
                return 2
            cur.execute("SET SESSION foreign_key_checks = 0")
            cur.execute("SHOW TABLES")
            dropped = [row[0] for row in cur.fetchall()]
            for table in dropped:
                cur.execute(f"DROP TABLE IF EXISTS `{table}`")
            t1 = time.monotonic()
            for st in statements:
                cur.execute(st.rstrip().rstrip(";"))
            loaded = round(time.monotonic() - t1, 1)
            cur.execute("SET SESSION foreign_key_checks = 1")
            imported = identity_counts(cur)
    finally:
        conn.close()
    t2 = time.monotonic()
    (manage or _manage)("db_sync")
    synced = round(time.monotonic() - t2, 1)
    # The deployment's bootstrap never runs over the imported admin (bootstrap would reset
    # its password and re-enable it): the import counts as the bootstrap.
    marker = bootstrap_marker(connect)
    if not marker:
        node = facts()
        record_bootstrap({"deployment": node.get("deployment", ""), "name": f"import:{node['name']}"[:64]}, connect)
        marker = bootstrap_marker(connect)
    for note in notes:
        print(f"keystone-node: {note}", file=sys.stderr)
    print(json.dumps({"imported": imported, "tables": len(tables), "statements": len(statements),
                      "replaced_tables": len(dropped), "converted": len(notes), "load_s": loaded, "db_sync_s": synced,
                      "bootstrap_marker": marker, "seconds": round(time.monotonic() - t0, 1),
                      "next": "keystone-node flush-cache on one Keystone node of every region"}))
    return 0


def memcache_servers():
    import configparser
    conf = configparser.ConfigParser(interpolation=None)
    with os.fdopen(os.open(CONFIG, os.O_RDONLY | os.O_NOFOLLOW)) as fh:
        conf.read_file(fh)
    return [s.strip() for s in conf.get("cache", "memcache_servers", fallback="").split(",") if s.strip()]


def cmd_flush_cache(args):
    """flush_all on every memcached server of keystone.conf: after an import, what this
    region's Keystone cached from the replaced database goes."""
    import socket
    results, failed = {}, 0
    for server in memcache_servers():
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(b"flush_all\r\n")
                answer = s.recv(64).decode(errors="replace").strip()
        except OSError as exc:
            answer = f"unreachable ({exc})"
        results[server] = answer
        failed += answer != "OK"
    print(json.dumps({"flushed": results}))
    return 1 if failed else 0


def cmd_key_check(args):
    try:
        with open(PUSHED) as fh:
            expected = json.load(fh)
    except (OSError, ValueError):
        print(f"keystone-node: no keys were pushed to this node ({PUSHED} is missing); run `pulumi up` "
              "on this region's stack", file=sys.stderr)
        return 1
    try:
        found = current_digests()
    except KeyDirError as exc:
        print(f"keystone-node: {exc}", file=sys.stderr)
        return 1
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
    try:
        print(json.dumps(current_digests(), sort_keys=True))
    except KeyDirError as exc:
        print(f"keystone-node: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="keystone-node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "key-digest", "key-check", "flush-cache"):
        sub.add_parser(name)
    for name in ("bootstrap", "wait-ready", "credential-migrate"):
        p = sub.add_parser(name)
        p.add_argument("--timeout", type=float, default=1800)
    p = sub.add_parser("install-keys")
    p.add_argument("--timeout", type=float, default=1800, help="how long to wait for `prepare` (seconds)")
    p.add_argument("--force", action="store_true",
                   help="install even a repository the checks refuse (a skipped rotation, more than one "
                        "rotation back, credentials still encrypted with a dropped key); says on stderr "
                        "what it overrode and which checks it skipped")
    p.add_argument("--import-digest", action="append", metavar="REPOSITORY=SHA256",
                   help="accept this repository wholesale although its primary was never staged here, if its "
                        "digest is SHA256: the keys of a Keystone moved in (the stack passes it while its "
                        "importedKeys config is set)")
    p = sub.add_parser("import-db", help="load an existing Keystone's database dump (stdin or --dump FILE)")
    p.add_argument("--dump", help="the dump as a file only root can read (default: stdin)")
    p.add_argument("--replace", action="store_true",
                   help="drop every table of the keystone database first, although it holds identity data")
    args = parser.parse_args(argv)
    return {"prepare": cmd_prepare, "import-db": cmd_import_db, "flush-cache": cmd_flush_cache, "bootstrap": cmd_bootstrap, "wait-ready": cmd_wait_ready,
            "install-keys": cmd_install_keys, "key-check": cmd_key_check,
            "credential-migrate": cmd_credential_migrate,
            "key-digest": cmd_key_digest}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
