"""Backups of the Galera cluster, for galera-node (`backup`, `backups`, `restore`).

Shipped next to galera-node (roles/galera.py: BACKUP_MODULE); standard library only, plus
the Debian tools the Galera role installs: mariabackup and mbstream (mariadb-backup),
mysqlbinlog, openssl, gzip and the `swift` client (python3-swiftclient).

What a backup is, in the object store (every object under "<deployment>/"):

    manifests/<id>.json      what the backup is: kind (full/incremental), its chain, LSNs,
                             the binary log position and GTID it is consistent with, size,
                             sha256 of the data object; signed (HMAC-SHA256 with a key
                             derived from the backup key), so an altered manifest, or one
                             made with another deployment's key, is refused
    data/<id>                mariabackup's mbstream, gzip, AES-256 (openssl enc, PBKDF2;
                             passphrase derived from the backup key): encrypted before it
                             leaves the node
    binlog-manifests/<node>/<incarnation>/<file>.json, binlogs/<node>/<incarnation>/<file>
                             each closed binary log, the same way; an incarnation is one
                             unbroken sequence of a node's binary logs (a new data volume or
                             an SST starts another, and with it a new full backup)

The manifest is written last: a backup without one never finished and is ignored.
Every backup goes to the region's own container and the next region's (backup.json).
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

PLAN = "/etc/keystone-multiregion/backup.json"
SECRETS = "/etc/keystone-multiregion/backup-secrets.json"
STATE_DIR = "/var/lib/keystone-multiregion"
STATUS = os.path.join(STATE_DIR, "backup-status.json")  # node-agent metrics reads it
STATE = os.path.join(STATE_DIR, "backup-state.json")    # the chain and the binary logs shipped
WORK = os.path.join(STATE_DIR, "backup-work")           # scratch space of one run (root disk)
LOCK = os.path.join(STATE_DIR, "backup.lock")
BINLOG_BASENAME = "mariadb-bin"  # galera.cnf: log_bin = <datadir>/mariadb-bin
FORMAT = 1
CIPHER = ["-aes-256-cbc", "-pbkdf2", "-iter", "100000", "-salt"]
TIMEOUT_S = 6 * 3600  # one backup or restore step, at most


class Refusal(Exception):
    """One line: what is refused and why; nothing was changed."""


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def stamp(t=None):
    return (t or now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text):
    """An operator's point in time: ISO 8601 (Z or an offset; none means UTC), or
    'YYYY-MM-DD HH:MM:SS' in UTC."""
    try:
        t = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise Refusal(f"--to {text!r} is not a time: write it as 2026-12-06T16:30:00Z (UTC)") from None
    return t if t.tzinfo else t.replace(tzinfo=datetime.timezone.utc)


def _load(path, what):
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise Refusal(f"{path} is missing: {what}") from None


def load_plan():
    plan = _load(PLAN, "this is not a Galera node of keystone-multiregion")
    if not plan.get("configured"):
        raise Refusal("backups are not configured: add backup.store to topology.yaml and run pulumi up")
    return plan


def load_secrets():
    return _load(SECRETS, "the stack has not pushed the backup key and the object store's credentials yet "
                          "(pulumi up pushes them to every Galera node)")


# -- keys -------------------------------------------------------------------------------------

def _derive(key, purpose):
    return hmac.new(key.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def sign(manifest, key):
    body = {k: v for k, v in manifest.items() if k != "hmac"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return {**body, "hmac": hmac.new(_derive(key, "manifest").encode(), text.encode(), hashlib.sha256).hexdigest()}


def manifest_problem(manifest, key, deployment):
    """Why a manifest may not be used (one line), or None."""
    if not isinstance(manifest, dict) or "hmac" not in manifest:
        return "it is not a keystone-multiregion backup manifest"
    if not hmac.compare_digest(sign(manifest, key)["hmac"], str(manifest["hmac"])):
        return ("its authentication code does not match this deployment's backup key: it was altered, or made "
                "by another deployment")
    if manifest.get("deployment") != deployment:
        return f"it belongs to deployment {manifest.get('deployment')!r}, not {deployment!r}"
    if manifest.get("format") != FORMAT:
        return f"its format {manifest.get('format')!r} is not {FORMAT}"
    return None


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- the object store (the swift client; credentials in its environment, never in argv) --------

def swift_env(plan, secrets, region_name=None):
    store = secrets["store"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "ST_"))}
    if plan["auth_version"] == "1":
        env.update(ST_AUTH=plan["auth_url"], ST_USER=store["user"], ST_KEY=store["key"], ST_AUTH_VERSION="1.0")
    else:
        env.update(OS_AUTH_URL=plan["auth_url"], OS_AUTH_TYPE="v3applicationcredential",
                   OS_IDENTITY_API_VERSION="3", OS_AUTH_VERSION="3",
                   OS_APPLICATION_CREDENTIAL_ID=store["application_credential_id"],
                   OS_APPLICATION_CREDENTIAL_SECRET=store["application_credential_secret"])
        if region_name:
            env["OS_REGION_NAME"] = region_name
    return env


class Store:
    """One container, through the swift client."""

    def __init__(self, plan, secrets, container, region_name=None):
        self.container = container
        self.env = swift_env(plan, secrets, region_name)

    def _swift(self, args, timeout=TIMEOUT_S):
        out = subprocess.run(["swift"] + args, env=self.env, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"swift {args[0]} {self.container}: "
                               f"{(out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or ['failed']}")
        return out.stdout

    def ensure(self):
        self._swift(["post", self.container], timeout=120)

    def put(self, name, path):
        self._swift(["upload", "--object-name", name, self.container, path])

    def get(self, name, path):
        self._swift(["download", "--output", path, self.container, name])

    def delete(self, name):
        self._swift(["delete", self.container, name], timeout=300)

    def get_all_json(self, prefix, workdir):
        """Every object under `prefix`, in one client run (it fetches them in parallel), as
        {name: parsed JSON} ({"unreadable": name} for one that does not parse)."""
        target = tempfile.mkdtemp(prefix="objects-", dir=workdir)
        try:
            self._swift(["download", "--prefix", prefix, "--output-dir", target, self.container])
            out = {}
            for root, _dirs, files in os.walk(target):
                for f in files:
                    path = os.path.join(root, f)
                    name = os.path.relpath(path, target)
                    with open(path) as fh:
                        try:
                            out[name] = json.load(fh)
                        except ValueError:
                            out[name] = {"unreadable": name}
            return out
        finally:
            shutil.rmtree(target, ignore_errors=True)


def stores(plan, secrets, only=None):
    """The backup's targets (own region first), or one region's container (`only`)."""
    if only:
        c = plan["containers"].get(only)
        if c is None:
            raise Refusal(f"--from {only}: no such region with backups (one of {', '.join(plan['containers'])})")
        return [(only, Store(plan, secrets, c["container"], c.get("region_name")))]
    return [(t["region"], Store(plan, secrets, t["container"], t.get("region_name"))) for t in plan["targets"]]


# -- pipelines ----------------------------------------------------------------------------------

def _pipeline(stages, out_path, env, stderr_path):
    """stages[0] | stages[1] | ... > out_path; raises with the first failing stage's name."""
    procs = []
    with open(out_path, "wb") as out, open(stderr_path, "ab") as err:
        prev = None
        for i, argv in enumerate(stages):
            p = subprocess.Popen(argv, stdin=prev, stdout=out if i == len(stages) - 1 else subprocess.PIPE,
                                 stderr=err, env=env)
            if prev is not None:
                prev.close()  # the next stage owns it now
            prev = p.stdout
            procs.append(p)
        deadline = time.monotonic() + TIMEOUT_S
        for argv, p in zip(stages, procs):
            try:
                p.wait(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise RuntimeError(f"{argv[0]} did not finish within {TIMEOUT_S} s")
    for argv, p in zip(stages, procs):
        if p.returncode != 0:
            with open(stderr_path, "rb") as fh:
                last = fh.read().decode(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"{argv[0]} exited {p.returncode}: {last[0] if last else ''}")


def _enc_env(key):
    return {**os.environ, "KSM_BACKUP_PASS": _derive(key, "encrypt")}


def encrypt_file(src, dst, key, log):
    _pipeline([["gzip", "-1", "-c", src], ["openssl", "enc", "-e"] + CIPHER + ["-pass", "env:KSM_BACKUP_PASS"]],
              dst, _enc_env(key), log)


def decrypt_to(src, dst, key, log):
    _pipeline([["openssl", "enc", "-d"] + CIPHER + ["-pass", "env:KSM_BACKUP_PASS", "-in", src], ["gzip", "-d", "-c"]],
              dst, _enc_env(key), log)


# -- state --------------------------------------------------------------------------------------

def read_json(path, default):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError):
        return default


def write_json(path, data, mode=0o600):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def record_status(result, **fields):
    """The last run, for node-agent metrics: success keeps the time of the last good backup."""
    status = read_json(STATUS, {})
    status.update(fields)
    status["last_run"] = time.time()
    status["last_result"] = result
    if result == "ok":
        status["last_success"] = status["last_run"]
    write_json(STATUS, status, 0o644)


# -- checkpoints and positions -----------------------------------------------------------------

def read_checkpoints(lsndir):
    values = {}
    with open(os.path.join(lsndir, "xtrabackup_checkpoints")) as fh:
        for line in fh:
            if "=" in line:
                k, v = line.split("=", 1)
                values[k.strip()] = v.strip()
    return values


_BINLOG_POS_RE = re.compile(r"binlog_pos\s*=\s*filename '([^']+)', position '(\d+)'(?:, GTID of the last change '([^']*)')?")


def read_binlog_position(lsndir):
    """(file, position, gtid) the backup is consistent with, from mariabackup's xtrabackup_info."""
    try:
        with open(os.path.join(lsndir, "xtrabackup_info")) as fh:
            m = _BINLOG_POS_RE.search(fh.read())
    except FileNotFoundError:
        m = None
    if not m:
        return None, None, None
    return m.group(1), int(m.group(2)), m.group(3) or ""


def gtid_seq(gtid_list, domain):
    """The sequence number of `domain` in a GTID list ('1-1-57,1001-1-3'), or -1."""
    for part in (gtid_list or "").split(","):
        bits = part.strip().split("-")
        if len(bits) == 3 and bits[0] == str(domain):
            return int(bits[2])
    return -1


def binlog_number(name):
    m = re.search(r"\.(\d+)$", name)
    return int(m.group(1)) if m else -1


# -- backup -------------------------------------------------------------------------------------

def _locked():
    os.makedirs(STATE_DIR, exist_ok=True)
    fh = open(LOCK, "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Refusal("another backup or restore runs on this node") from None
    return fh


def choose_kind(state, plan, wanted, binlog_files):
    """'full' or 'incremental' for this run, and why."""
    if wanted == "full":
        return "full", "asked for"
    chain = state.get("chain")
    if not chain:
        return "full", "no chain on this node yet"
    if not files_continue(state, binlog_files):
        return "full", "this node's binary logs started anew (new volume or SST), or none was shipped"
    age_h = (time.time() - chain["started"]) / 3600
    if wanted is None and age_h >= plan["full_interval_h"]:
        return "full", f"the last full backup is {age_h:.1f} h old"
    return "incremental", f"on top of {chain['last_id']}"


def take_backup(g, plan, secrets, wanted=None, log=print):
    """One backup of this node (full or incremental), put into every target. Returns its manifest."""
    node = plan["node"]
    status = g.wsrep_status()
    if not g.healthy(status):
        raise Refusal(f"this node is {status.get('wsrep_local_state_comment')}/{status.get('wsrep_cluster_status')}, "
                      "not Synced in a Primary component: back up a member that holds the cluster's data")
    state = read_json(STATE, {})
    files = [row[0] for row in g.mysql("SHOW BINARY LOGS")]
    kind, why = choose_kind(state, plan, wanted, files)
    if kind == "incremental" and wanted == "incremental" and not state.get("chain"):
        raise Refusal("no full backup on this node to build on: take a full one first (galera-node backup --full)")
    started = now()
    backup_id = started.strftime("%Y%m%dT%H%M%SZ") + f"-{node}-{kind}"
    work = os.path.join(WORK, backup_id)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "lsn"), mode=0o700)
    os.makedirs(os.path.join(work, "tmp"), mode=0o700)
    argv = ["mariabackup", "--backup", "--stream=mbstream", "--galera-info", f"--target-dir={work}/tmp",
            f"--extra-lsndir={work}/lsn", "--user=root", f"--socket={g.SOCKET}"]
    if kind == "incremental":
        argv.append(f"--incremental-lsn={state['chain']['to_lsn']}")
    data = os.path.join(work, "data")
    # Desynced, this node sends no flow control while mariabackup holds its locks: the
    # cluster (every other region) commits on; the node catches up from its queue after.
    t0 = time.monotonic()
    g.mysql("SET GLOBAL wsrep_desync = ON")
    try:
        _pipeline([argv, ["gzip", "-1"], ["openssl", "enc", "-e"] + CIPHER + ["-pass", "env:KSM_BACKUP_PASS"]],
                  data, _enc_env(secrets["key"]), os.path.join(work, "mariabackup.log"))
    finally:
        g.mysql("SET GLOBAL wsrep_desync = OFF")
    desync_s = time.monotonic() - t0
    checkpoints = read_checkpoints(os.path.join(work, "lsn"))
    binlog_file, binlog_pos, gtid = read_binlog_position(os.path.join(work, "lsn"))
    # One incarnation per unbroken sequence of this node's binary logs (their objects' folder).
    incarnation = state.get("incarnation") if files_continue(state, files) else None
    incarnation = incarnation or uuid.uuid4().hex[:12]
    chain_id = backup_id if kind == "full" else state["chain"]["full_id"]
    manifest = sign({
        "format": FORMAT, "deployment": plan["deployment"], "region": plan["region"], "node": node,
        "id": backup_id, "kind": kind, "chain": chain_id,
        "base": None if kind == "full" else state["chain"]["last_id"],
        "from_lsn": int(checkpoints.get("from_lsn", 0)), "to_lsn": int(checkpoints["to_lsn"]),
        "started": stamp(started), "finished": stamp(), "binlog_file": binlog_file, "binlog_pos": binlog_pos,
        "gtid": gtid, "incarnation": incarnation, "size": os.path.getsize(data), "sha256": sha256_file(data),
        "cipher": " ".join(CIPHER), "compression": "gzip",
    }, secrets["key"])
    mpath = os.path.join(work, "manifest.json")
    write_json(mpath, manifest)
    prefix = plan["deployment"]
    copies = []
    for region, store in stores(plan, secrets):
        store.ensure()
        store.put(f"{prefix}/data/{backup_id}", data)
        store.put(f"{prefix}/manifests/{backup_id}.json", mpath)  # last: the backup exists from now on
        copies.append(region)
    chain = state.get("chain") if kind == "incremental" else {"full_id": backup_id, "started": time.time()}
    chain.update(last_id=backup_id, to_lsn=manifest["to_lsn"])
    if incarnation != state.get("incarnation"):
        state.update(shipped=[], incarnation_files=[])  # a new sequence: nothing of it shipped yet
    state.update(chain=chain, incarnation=incarnation)
    write_json(STATE, state)
    shutil.rmtree(work, ignore_errors=True)
    log(json.dumps({"backup": backup_id, "kind": kind, "chain": chain_id, "why": why, "size": manifest["size"],
                    "desync_s": round(desync_s, 2), "copies": copies, "gtid": gtid}))
    return {**manifest, "copies": copies, "desync_s": round(desync_s, 2)}


def files_continue(state, files):
    """True when the binary logs shipped so far are still on this node (one unbroken sequence)."""
    shipped = state.get("incarnation_files") or []
    return bool(shipped) and bool(set(shipped) & set(files))


def ship_binlogs(g, plan, secrets, log=print):
    """Close the current binary log and put every closed one not shipped yet into every target."""
    state = read_json(STATE, {})
    if not state.get("incarnation"):
        raise Refusal("no backup on this node yet: binary logs are shipped with a backup chain "
                      "(galera-node backup --full)")
    g.mysql("FLUSH BINARY LOGS")
    rows = g.mysql("SHOW BINARY LOGS")
    closed = [row[0] for row in rows[:-1]]  # the last one is the new, open log
    shipped = set(state.get("shipped", []))
    node, inc, prefix = plan["node"], state["incarnation"], plan["deployment"]
    sent = []
    targets = stores(plan, secrets)
    work = os.path.join(WORK, "binlogs")
    os.makedirs(work, mode=0o700, exist_ok=True)
    for name in closed:
        if name in shipped:
            continue
        src = os.path.join(g.DATADIR, name)
        enc = os.path.join(work, name + ".enc")
        encrypt_file(src, enc, secrets["key"], os.path.join(work, "openssl.log"))
        manifest = sign({"format": FORMAT, "deployment": prefix, "region": plan["region"], "node": node,
                         "kind": "binlog", "incarnation": inc, "file": name, "number": binlog_number(name),
                         "shipped": stamp(), "size": os.path.getsize(enc), "sha256": sha256_file(enc)},
                        secrets["key"])
        mpath = enc + ".json"
        write_json(mpath, manifest)
        for _region, store in targets:
            store.ensure()
            store.put(f"{prefix}/binlogs/{node}/{inc}/{name}", enc)
            store.put(f"{prefix}/binlog-manifests/{node}/{inc}/{name}.json", mpath)
        os.unlink(enc)
        os.unlink(mpath)
        shipped.add(name)
        sent.append(name)
    present = {row[0] for row in rows}
    state.update(shipped=sorted(s for s in shipped if s in present) + sorted(s for s in sent if s not in present),
                 incarnation_files=sorted(present))
    write_json(STATE, state)
    log(json.dumps({"binlogs_shipped": sent, "incarnation": inc}))
    return sent


def prune(plan, secrets, log=print):
    """Chains older than keep_days go, never the newest chain; binary logs older than the
    oldest kept chain's first backup go with them."""
    keep_s = plan["keep_days"] * 86400
    removed = []
    work = tempfile.mkdtemp(prefix="prune-", dir=_workdir())
    try:
        for region, store in stores(plan, secrets):
            removed += _prune_store(region, store, plan, secrets, work, keep_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if removed:
        log(json.dumps({"pruned": removed}))
    return removed


def _prune_store(region, store, plan, secrets, work, keep_s):
    """One container's chains older than keep_days deleted (never its newest chain)."""
    removed = []
    chains = {}
    for m in _manifests(store, plan, secrets, work):
        if not m.get("problem"):
            chains.setdefault(m["chain"], []).append(m)
    ordered = sorted(chains, key=lambda c: min(m["started"] for m in chains[c]))
    kept = list(ordered)
    for chain in ordered[:-1]:
        newest = max(parse_time(m["finished"]) for m in chains[chain])
        if (now() - newest).total_seconds() > keep_s:
            for m in chains[chain]:
                store.delete(f"{plan['deployment']}/manifests/{m['id']}.json")
                store.delete(f"{plan['deployment']}/data/{m['id']}")
                removed.append((region, m["id"]))
            kept.remove(chain)
    if not kept:
        return removed
    # Binary logs shipped before the oldest kept chain began hold only what it already has.
    oldest = min(m["started"] for m in chains[kept[0]])
    prefix = f"{plan['deployment']}/binlog-manifests/"
    for name, m in sorted(store.get_all_json(prefix, work).items()):
        if m.get("kind") == "binlog" and m.get("shipped", "9") < oldest:
            rest = name[len(prefix):].removesuffix(".json")
            store.delete(f"{plan['deployment']}/binlogs/{rest}")
            store.delete(name)
            removed.append((region, f"binlog {rest}"))
    return removed


def cmd_backup(g, args):
    try:
        plan = load_plan()
    except Refusal as exc:
        if args.scheduled:
            print(f"galera-node backup: {exc}", flush=True)
            return 0
        raise
    if args.scheduled and not plan.get("designated"):
        print(f"galera-node backup: {plan['node']} is not {plan['region']}'s backup node (its first Galera node)",
              flush=True)
        return 0
    secrets = load_secrets()
    lock = _locked()
    t0 = time.monotonic()
    try:
        result = {}
        if not args.binlogs_only:
            result = take_backup(g, plan, secrets, "full" if args.full else "incremental" if args.incremental else None)
        shipped = ship_binlogs(g, plan, secrets)
        if not args.binlogs_only:
            prune(plan, secrets)
    except (Refusal, RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        record_status(f"failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"[:300],
                      duration_s=round(time.monotonic() - t0, 1))
        raise
    finally:
        lock.close()
    if result:
        record_status("ok", last_id=result["id"], kind=result["kind"], size_bytes=result["size"],
                      desync_s=result["desync_s"], copies=result["copies"], binlogs=len(shipped),
                      duration_s=round(time.monotonic() - t0, 1))
    return 0


# -- what exists --------------------------------------------------------------------------------

def _manifests(store, plan, secrets, workdir):
    """Every backup manifest in a container, each with its problem (or none)."""
    os.makedirs(workdir, mode=0o700, exist_ok=True)
    out = []
    for name, m in sorted(store.get_all_json(f"{plan['deployment']}/manifests/", workdir).items()):
        problem = manifest_problem(m, secrets["key"], plan["deployment"])
        out.append({**m, "object": name, "problem": problem} if problem else {**m, "problem": None})
    return out


def cmd_backups(g, args):
    plan, secrets = load_plan(), load_secrets()
    work = tempfile.mkdtemp(prefix="list-", dir=_workdir())
    try:
        listing = []
        for region, store in stores(plan, secrets, args.region):
            try:
                manifests = _manifests(store, plan, secrets, work)
            except RuntimeError as exc:
                listing.append({"region": region, "container": store.container, "error": str(exc)})
                continue
            for m in sorted(manifests, key=lambda m: m.get("started", "")):
                entry = {"region": region, "container": store.container, "id": m.get("id", m.get("object")),
                         "kind": m.get("kind"), "chain": m.get("chain"), "finished": m.get("finished"),
                         "age_h": round((now() - parse_time(m["finished"])).total_seconds() / 3600, 2)
                         if m.get("finished") else None,
                         "size": m.get("size"), "sha256": m.get("sha256"), "gtid": m.get("gtid"),
                         "check": m["problem"] or "manifest ok"}
                if args.verify and not m["problem"]:
                    entry["check"] = _verify_data(store, plan, m, work) or "data ok"
                listing.append(entry)
        print(json.dumps(listing, indent=2))
        return 0 if all(e.get("check", "").endswith("ok") for e in listing) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _verify_data(store, plan, manifest, work):
    """The data object's problem (one line), or None; the object is downloaded and hashed."""
    path = os.path.join(work, manifest["id"])
    try:
        store.get(f"{plan['deployment']}/data/{manifest['id']}", path)
    except RuntimeError as exc:
        return f"data object missing: {exc}"
    try:
        size, digest = os.path.getsize(path), sha256_file(path)
    finally:
        os.unlink(path)
    if size != manifest["size"] or digest != manifest["sha256"]:
        return (f"checksum fails: data/{manifest['id']} is {size} bytes with sha256 {digest[:16]}..., the manifest "
                f"says {manifest['size']} bytes, {manifest['sha256'][:16]}...")
    return None


def _workdir():
    os.makedirs(WORK, mode=0o700, exist_ok=True)
    return WORK


# -- restore ------------------------------------------------------------------------------------

def select_chain(manifests, to_time=None, to_gtid=None, backup_id=None, domain=1):
    """The backups to restore, full first: the newest full backup that is consistent before the
    target, and its incrementals up to the target. None if no backup fits."""
    good = [m for m in manifests if not m.get("problem")]

    def before(m):
        if backup_id:
            return m["started"] <= next((b["started"] for b in good if b["id"] == backup_id), "")
        if to_time is not None:
            return parse_time(m["finished"]) <= to_time
        if to_gtid is not None:
            return 0 <= gtid_seq(m.get("gtid"), domain) < gtid_seq(to_gtid, domain)
        return True
    fulls = sorted((m for m in good if m["kind"] == "full" and before(m)), key=lambda m: m["started"])
    if not fulls:
        return None
    full = fulls[-1]
    chain = [full]
    for m in sorted((m for m in good if m["kind"] == "incremental" and m["chain"] == full["id"] and before(m)),
                    key=lambda m: m["started"]):
        if m["base"] != chain[-1]["id"]:
            break  # a gap in the chain: stop at the last unbroken backup
        chain.append(m)
    return chain


def gtid_stop_position(binlog_paths, gtid):
    """(index of the binary log, byte position) where the transaction `gtid` starts, so a
    replay stops just before it; None when no log holds it."""
    for i, path in enumerate(binlog_paths):
        out = subprocess.run(["mysqlbinlog", path], capture_output=True, text=True, timeout=TIMEOUT_S)
        position = None
        for line in out.stdout.splitlines():
            m = re.match(r"^# at (\d+)$", line)
            if m:
                position = int(m.group(1))
                continue
            m = re.search(r"\bGTID (\d+-\d+-\d+)\b", line)
            if m and m.group(1) == gtid.strip():
                return i, position
    return None


def mariadbd_running(g):
    """True when a server answers on this node's socket."""
    try:
        g.mysql("SELECT 1", timeout=5)
        return True
    except (RuntimeError, subprocess.TimeoutExpired, OSError):
        return False


def restore(g, args, log=print):
    """Download, verify, prepare and put in place a backup chain (+ binary logs up to the
    target) on this stopped node. Returns a summary; the caller starts the new cluster."""
    plan, secrets = load_plan(), load_secrets()
    to_time = parse_time(args.to) if args.to else None
    to_gtid = args.to_gtid
    if to_gtid and not re.match(r"^\d+-\d+-\d+$", to_gtid):
        raise Refusal(f"--to-gtid {to_gtid!r} is not a GTID: write it as domain-server-sequence, e.g. 1-1-4711")
    dry_run = getattr(args, "dry_run", False)
    problem = None if dry_run else g.volume_problem()
    if problem:
        raise Refusal(problem)
    if dry_run:
        return _dry_run(g, args, plan, secrets, to_time, to_gtid, log)
    if mariadbd_running(g):
        raise Refusal("MariaDB runs on this node: stop it first (systemctl stop mariadb); a restore replaces its data")
    node = g.facts()
    primary, unknown = g.primary_peers(node, ignore=args.ignore_peer)
    if primary:
        raise Refusal(f"{', '.join(primary)} still run a Primary component of the cluster: stop MariaDB on every "
                      "member first (a restore starts a new cluster from this node; the others then join it by SST)")
    if unknown:
        raise Refusal(f"could not tell whether these peers run the cluster ({'; '.join(unknown)}); check them, "
                      "then repeat with --ignore-peer ADDRESS")
    lock = _locked()
    run_dir = os.path.join(WORK, "restore-" + now().strftime("%Y%m%dT%H%M%SZ"))
    os.makedirs(run_dir, mode=0o700)
    log_path = os.path.join(run_dir, "restore.log")
    try:
        region, store, chain, binlogs, stop = _fetch_and_prepare(plan, secrets, args, to_time, to_gtid, run_dir,
                                                                 log_path)
        full_dir = os.path.join(run_dir, "full")
        last = chain[-1]
        # 3. Put it in place: the data directory's old contents are kept, not deleted.
        before = os.path.join(run_dir, "before")
        os.makedirs(before, mode=0o700)
        for name in os.listdir(g.DATADIR):
            if name != "lost+found":
                shutil.move(os.path.join(g.DATADIR, name), os.path.join(before, name))
        _run(["mariabackup", "--copy-back", f"--target-dir={full_dir}", f"--datadir={g.DATADIR}"], log_path)
        for name in ("grastate.dat", "gvwstate.dat", "galera.cache"):
            if os.path.exists(os.path.join(g.DATADIR, name)):
                os.unlink(os.path.join(g.DATADIR, name))  # a new cluster starts from here
        _run(["chown", "-R", "mysql:mysql", g.DATADIR], log_path)
        replayed = _replay(g, binlogs, last, to_time, stop, run_dir, log_path) if binlogs else {"events_until": None}
        shutil.rmtree(full_dir, ignore_errors=True)
        summary = {"node": plan["node"], "from": region, "container": store.container,
                   "chain": [m["id"] for m in chain], "backup_gtid": last.get("gtid"),
                   "binlogs": [os.path.basename(p) for _, p in binlogs], "to": args.to, "to_gtid": to_gtid,
                   "kept_old_data": before, **replayed}
        write_json(os.path.join(run_dir, "summary.json"), summary)
        log(json.dumps(summary))
        return summary
    finally:
        lock.close()


def _dry_run(g, args, plan, secrets, to_time, to_gtid, log):
    """Everything a restore does before it touches the node: the chain found, downloaded,
    checked, decrypted and prepared, the binary logs fetched; then thrown away. The cluster
    keeps running: this is how a backup is tested."""
    lock = _locked()
    run_dir = tempfile.mkdtemp(prefix="dry-run-", dir=_workdir())
    try:
        region, store, chain, binlogs, stop = _fetch_and_prepare(
            plan, secrets, args, to_time, to_gtid, run_dir, os.path.join(run_dir, "restore.log"))
        summary = {"dry_run": True, "node": plan["node"], "from": region, "container": store.container,
                   "chain": [m["id"] for m in chain], "backup_gtid": chain[-1].get("gtid"),
                   "binlogs": [os.path.basename(p) for _, p in binlogs], "prepared": True,
                   "stop_before": {"binlog": os.path.basename(binlogs[stop[0]][1]), "position": stop[1]}
                   if stop else None}
        log(json.dumps(summary))
        return summary
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        lock.close()


def _fetch_and_prepare(plan, secrets, args, to_time, to_gtid, run_dir, log_path):
    """Steps 1 and 2 of a restore, in run_dir: (region, store, chain, binlogs, stop)."""
    # 1. Find and check everything before touching the node.
    source, manifests, errors = None, [], []
    for region, store in stores(plan, secrets, args.source):
        try:
            manifests = _manifests(store, plan, secrets, os.path.join(run_dir, "manifests"))
            source = (region, store)
            break
        except RuntimeError as exc:
            errors.append(f"{region}: {exc}")
    if source is None:
        raise Refusal(f"no container answered ({'; '.join(errors)})")
    region, store = source
    if args.backup:
        chosen = [m for m in manifests if m.get("id") == args.backup]
        if not chosen:
            raise Refusal(f"no backup {args.backup} in {store.container}")
        if chosen[0]["problem"]:
            raise Refusal(f"backup {args.backup} in {store.container}: {chosen[0]['problem']}; nothing restored")
    chain = select_chain(manifests, to_time, to_gtid, args.backup)
    if chain is None:
        bad = [m for m in manifests if m.get("problem")]
        raise Refusal(f"no usable backup in {store.container} before the target"
                      + (f" ({len(bad)} refused: {bad[0]['problem']})" if bad else ""))
    downloads = []
    for m in chain:
        path = os.path.join(run_dir, m["id"] + ".enc")
        store.get(f"{plan['deployment']}/data/{m['id']}", path)
        size, digest = os.path.getsize(path), sha256_file(path)
        if size != m["size"] or digest != m["sha256"]:
            raise Refusal(f"backup {m['id']} in {store.container}: checksum fails ({size} bytes, sha256 "
                          f"{digest[:16]}...; its manifest says {m['size']} bytes, {m['sha256'][:16]}...): "
                          "nothing restored")
        downloads.append((m, path))
    last = chain[-1]
    binlogs = []
    if not args.no_binlogs:
        binlogs = _fetch_binlogs(store, plan, secrets, last, run_dir, log_path)
    # 2. Decrypt, unpack and prepare (still nothing changed on the node).
    full_dir = os.path.join(run_dir, "full")
    for i, (m, path) in enumerate(downloads):
        target = full_dir if i == 0 else os.path.join(run_dir, f"inc{i}")
        os.makedirs(target, mode=0o700)
        stream = path + ".mbs"
        try:
            decrypt_to(path, stream, secrets["key"], log_path)
        except RuntimeError as exc:
            raise Refusal(f"backup {m['id']} does not decrypt with this deployment's key ({exc}): "
                          "nothing restored") from None
        os.unlink(path)
        _run(["mbstream", "-x", "-C", target], log_path, stdin_path=stream)
        os.unlink(stream)
    _run(["mariabackup", "--prepare", f"--target-dir={full_dir}"], log_path)
    for i in range(1, len(downloads)):
        _run(["mariabackup", "--prepare", f"--target-dir={full_dir}",
              f"--incremental-dir={os.path.join(run_dir, f'inc{i}')}"], log_path)
    stop = None
    if to_gtid and binlogs:
        stop = gtid_stop_position([p for _, p in binlogs], to_gtid)
        if stop is None:
            raise Refusal(f"no shipped binary log after backup {last['id']} holds GTID {to_gtid}: nothing restored "
                          "(ship them first: galera-node backup --binlogs-only on the backup node, if it runs)")
        binlogs = binlogs[:stop[0] + 1]
    return region, store, chain, binlogs, stop


def _run(argv, log_path, stdin_path=None, timeout=TIMEOUT_S):
    with open(log_path, "ab") as err, (open(stdin_path, "rb") if stdin_path else open(os.devnull, "rb")) as stdin:
        out = subprocess.run(argv, stdin=stdin, stdout=err, stderr=err, timeout=timeout)
    if out.returncode != 0:
        with open(log_path, "rb") as fh:
            last = fh.read().decode(errors="replace").strip().splitlines()[-1:]
        raise RuntimeError(f"{argv[0]} {argv[1] if len(argv) > 1 else ''} exited {out.returncode}: "
                           f"{last[0] if last else ''} (log: {log_path})")


def _fetch_binlogs(store, plan, secrets, last, run_dir, log_path):
    """The binary logs of the backup's node and incarnation from its position on, checked and
    decrypted, in order: [(manifest, path)]. A gap ends the list."""
    if not last.get("binlog_file"):
        return []
    prefix = f"{plan['deployment']}/binlog-manifests/{last['node']}/{last['incarnation']}/"
    work = os.path.join(run_dir, "binlogs")
    os.makedirs(work, mode=0o700)
    found = []
    for name, m in sorted(store.get_all_json(prefix, work).items()):
        problem = manifest_problem(m, secrets["key"], plan["deployment"])
        if problem:
            raise Refusal(f"binary log manifest {name}: {problem}; nothing restored")
        if m["number"] >= binlog_number(last["binlog_file"]):
            found.append(m)
    out = []
    expected = binlog_number(last["binlog_file"])
    for m in sorted(found, key=lambda m: m["number"]):
        if m["number"] != expected:
            break
        enc = os.path.join(work, m["file"] + ".enc")
        store.get(f"{plan['deployment']}/binlogs/{last['node']}/{last['incarnation']}/{m['file']}", enc)
        if os.path.getsize(enc) != m["size"] or sha256_file(enc) != m["sha256"]:
            raise Refusal(f"binary log {m['file']} in {store.container}: checksum fails: nothing restored")
        path = os.path.join(work, m["file"])
        try:
            decrypt_to(enc, path, secrets["key"], log_path)
        except RuntimeError as exc:
            raise Refusal(f"binary log {m['file']} does not decrypt with this deployment's key ({exc})") from None
        os.unlink(enc)
        out.append((m, path))
        expected += 1
    return out


def _replay(g, binlogs, last, to_time, stop, run_dir, log_path):
    """Replay the binary logs on the restored data with a private, standalone server (no
    replication, no network, no binary log of its own), up to the target."""
    # The server runs as mysql: its socket, pid file and log in a directory of its own.
    import pwd
    mysql_user = pwd.getpwnam("mysql")
    rundir = os.path.join(run_dir, "replay")
    os.makedirs(rundir, mode=0o700)
    os.chown(rundir, mysql_user.pw_uid, mysql_user.pw_gid)
    os.chmod(run_dir, 0o711)
    sock = os.path.join(rundir, "replay.sock")
    server_log = os.path.join(rundir, "server.log")
    server = subprocess.Popen(["mariadbd", "--user=mysql", f"--datadir={g.DATADIR}", "--wsrep-provider=none",
                               "--wsrep-on=OFF", "--skip-networking", "--skip-log-bin", f"--socket={sock}",
                               f"--pid-file={os.path.join(rundir, 'replay.pid')}", "--skip-slave-start",
                               f"--log-error={server_log}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        client = ["mariadb", "--protocol=socket", "-S", sock, "-u", "root", "-N", "-B"]
        while subprocess.run(client, input="SELECT 1", capture_output=True, text=True, timeout=30).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the replay server did not start (log: {server_log})")
            time.sleep(0.5)
        argv = ["mysqlbinlog", f"--start-position={last['binlog_pos']}"]
        if stop is not None:
            argv.append(f"--stop-position={stop[1]}")
        elif to_time is not None:
            argv.append(f"--stop-datetime={to_time.astimezone(datetime.timezone.utc):%Y-%m-%d %H:%M:%S}")
        argv += [p for _, p in binlogs]
        sql = os.path.join(run_dir, "replay.sql")
        with open(sql, "wb") as out, open(log_path, "ab") as err:
            done = subprocess.run(argv, stdout=out, stderr=err, timeout=TIMEOUT_S, env={**os.environ, "TZ": "UTC"})
        if done.returncode != 0:
            raise RuntimeError(f"mysqlbinlog exited {done.returncode} (log: {log_path})")
        _run(client, log_path, stdin_path=sql)
        gtid = subprocess.run(client, input="SELECT @@gtid_binlog_pos, @@gtid_slave_pos", capture_output=True,
                              text=True, timeout=30).stdout.strip()
        with open(sql, errors="replace") as fh:
            gtids = re.findall(r"\bGTID (\d+-\d+-\d+)\b", fh.read())
        os.unlink(sql)
        return {"replayed_transactions": len(gtids), "last_replayed_gtid": gtids[-1] if gtids else None,
                "replay_server_gtid": gtid}
    finally:
        subprocess.run(["mariadb-admin", "--protocol=socket", "-S", sock, "-u", "root", "shutdown"],
                       capture_output=True, timeout=300)
        try:
            server.wait(timeout=300)
        except subprocess.TimeoutExpired:
            server.kill()
