"""Drill B5: moving an existing Keystone in (issue #14, item 7).

A standalone single-region Keystone runs in a namespace of its own ('legacy', in admin_cidr):
its own MariaDB without Galera, Debian's keystone served by uwsgi on the namespace's loopback,
Fernet and credential keys made by keystone-manage fernet_setup / credential_setup, and
`keystone-manage bootstrap`. It gets users, projects, role assignments and a TOTP user (a
password+totp rule, its secret a credential created through the API), and one of its users
a token. Then it moves into the running lab as an operator would:

  1. mariadb-dump of its keystone database (one table made MyISAM beforehand: the import
     converts it for Galera); its key repositories copied;
  2. `python -m keystone_multiregion import-keys --fernet DIR --credential DIR --out FILE`
     (what the shared stack's importedKeys config then holds);
  3. `keystone-node import-db --replace` on one Keystone node, the dump on stdin (the regions
     already serve, bootstrapped, so --replace);
  4. the imported repositories pushed to every Keystone node as the region stacks push them
     (install-keys over SSH, with --import-digest); `keystone-node flush-cache` in every region;
  5. the catalog registered (the stacks' registerCatalog flipped to true).

Then a token issued by the standalone before the move validates in every region, the TOTP
user logs in everywhere, and every user, project and role assignment is there. The lab is
put back afterwards (its own dump imported the same way, its keys pushed back), so the
modules that run later find it as it was. Traffic stays in lab namespaces and loopback; every
wait is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from keystone_multiregion.keys import digests, payload
from keystone_multiregion.roles.keystone import install_keys_command

from .drills import DrillResult, wait_until
from .keystone_drills import CLIENT, KeystoneDrills
from .ksclient import totp
from .net import HostSpec
from .ssh import ssh
from .util import LabError

LEGACY = "legacy"
REPO = Path(__file__).resolve().parent.parent
LEGACY_DIRS = ("/var/lib/mysql", "/run/mysqld", "/etc/keystone", "/var/log/keystone", "/var/lib/keystone")
LEGACY_URL = "http://127.0.0.1:5000"
TOOL = ["python3", "/usr/local/sbin/keystone-node"]
LEGACY_CONF = """[DEFAULT]
use_stderr = true
[database]
connection = mysql+pymysql://keystone:{db_password}@127.0.0.1:3306/keystone
[token]
provider = fernet
[fernet_tokens]
key_repository = /etc/keystone/fernet-keys/
max_active_keys = 3
[fernet_receipts]
key_repository = /etc/keystone/fernet-keys/
[credential]
key_repository = /etc/keystone/credential-keys/
[auth]
methods = password,token,totp,application_credential
"""
MARIADBD = ["/usr/sbin/mariadbd", "--no-defaults", "--user=mysql", "--datadir=/var/lib/mysql",
            "--socket=/run/mysqld/mysqld.sock", "--bind-address=127.0.0.1", "--port=3306",
            "--pid-file=/run/mysqld/mysqld.pid", "--innodb-buffer-pool-size=16M", "--performance-schema=OFF",
            "--skip-log-bin"]


def _address(topo) -> str:
    import ipaddress
    net = ipaddress.ip_network(topo.admin_cidr)
    return f"{net[40]}/{net.prefixlen}"


class Standalone:
    """The single-region Keystone to move in, in namespace `legacy`."""

    def __init__(self, dep, admin_password: str):
        self.dep, self.lab = dep, dep.lab
        self.admin_password = admin_password
        self.db_password = uuid.uuid4().hex

    def run(self, argv, **kw):
        return self.lab.procs.run(LEGACY, argv, **kw)

    def sql(self, statement: str, timeout: float = 30, check: bool = True):
        return self.run(["mariadb", "--protocol=socket", "-S", "/run/mysqld/mysqld.sock", "-u", "root", "-N", "-B"],
                        input=statement, timeout=timeout, check=check)

    def path(self, vm_path: str) -> Path:
        return Path(self.lab.procs.host_path(LEGACY, vm_path))

    def manage(self, *argv, env=None, timeout=300):
        return self.run(["keystone-manage", "--config-file", "/etc/keystone/keystone.conf", *argv], timeout=timeout,
                        env=env)

    def up(self, log=print) -> dict:
        t = time.monotonic()
        if LEGACY not in self.lab.net.hosts():
            self.lab.net.add_host(HostSpec(LEGACY, "admin", _address(self.dep.topo)))
        self.lab.procs.make_root(LEGACY, LEGACY_DIRS)
        import grp
        import pwd
        mysql = pwd.getpwnam("mysql").pw_uid, grp.getgrnam("mysql").gr_gid
        ks = pwd.getpwnam("keystone").pw_uid, grp.getgrnam("keystone").gr_gid
        for d, owner in (("/var/lib/mysql", mysql), ("/run/mysqld", mysql), ("/var/log/keystone", ks),
                         ("/var/lib/keystone", ks)):
            os.chown(self.path(d), *owner)
        conf = self.path("/etc/keystone") / "keystone.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w") as fh:
            fh.write(LEGACY_CONF.format(db_password=self.db_password))
        os.chown(conf, 0, ks[1])
        if not (self.path("/var/lib/mysql") / "mysql").exists():
            self.run(["mariadb-install-db", "--no-defaults", "--user=mysql", "--datadir=/var/lib/mysql",
                      "--auth-root-authentication-method=socket", "--skip-test-db"], timeout=180)
        self.lab.procs.start(LEGACY, "mariadb", MARIADBD, ready=lambda: self.sql("SELECT 1", check=False).returncode == 0,
                             ready_timeout=120)
        # The password on stdin (a SQL statement), never in argv.
        self.sql("CREATE DATABASE keystone; CREATE USER 'keystone'@'127.0.0.1' IDENTIFIED BY "
                 f"'{self.db_password}'; GRANT ALL ON keystone.* TO 'keystone'@'127.0.0.1';")
        self.manage("db_sync", timeout=600)
        self.manage("fernet_setup", "--keystone-user", "keystone", "--keystone-group", "keystone")
        self.manage("credential_setup", "--keystone-user", "keystone", "--keystone-group", "keystone")
        self.manage("bootstrap", "--bootstrap-username", "admin", "--bootstrap-project-name", "admin",
                    "--bootstrap-role-name", "admin", "--bootstrap-region-id", "RegionOne",
                    "--bootstrap-public-url", LEGACY_URL, env={"OS_BOOTSTRAP_PASSWORD": self.admin_password})
        # A standalone MariaDB's defaults may leave a table in another engine: this one makes
        # the import's conversion for Galera happen.
        self.sql("ALTER TABLE keystone.alembic_version ENGINE=MyISAM")
        self.lab.procs.start(LEGACY, "keystone", [
            "uwsgi_python3", "--http-socket", "127.0.0.1:5000", "--wsgi-file", "/usr/bin/keystone-wsgi-public",
            "--master", "--processes", "1", "--threads", "1", "--lazy-apps", "--die-on-term",
            "--uid", "keystone", "--gid", "keystone", "--chdir", "/var/lib/keystone", "--buffer-size", "65535"],
            ready=lambda: self.ks("call", "GET", LEGACY_URL, "-", "/v3").get("status") == 200, ready_timeout=120)
        return {"standalone_up_s": round(time.monotonic() - t, 1)}

    def ks(self, *args: str, secret: str | None = None) -> dict:
        out = self.lab.net.exec(LEGACY, [sys.executable, CLIENT, *args], timeout=90, check=False,
                                input=None if secret is None else secret + "\n")
        lines = out.stdout.strip().splitlines()
        return json.loads(lines[-1]) if lines else {"status": None, "error": out.stderr.strip()[-500:]}

    def down(self) -> None:
        self.lab.procs.stop_all(LEGACY)
        if LEGACY in self.lab.net.hosts():
            self.lab.net.remove_host(LEGACY)


class LegacyClient(KeystoneDrills):
    """KeystoneDrills' API helpers aimed at the standalone (from inside its namespace)."""

    def __init__(self, dep, standalone: Standalone):
        super().__init__(dep)
        self.standalone = standalone
        self.password = standalone.admin_password

    def url(self, region: str) -> str:
        return LEGACY_URL if region == LEGACY else super().url(region)

    def ks(self, region: str, *args: str, secret: str | None = None) -> dict:
        if region != LEGACY:
            return super().ks(region, *args, secret=secret)
        if args and args[0] == "token" and len(args) > 3 and args[3] not in ("-", "@stdin"):
            secret, args = args[3], (*args[:3], "@stdin", *args[4:])
        return self.standalone.ks(*args, secret=secret)


def inventory(client: KeystoneDrills, region: str) -> dict:
    """Every user, project and role assignment (by names) that `region` serves."""
    token = client.admin_token(region)
    users = client.call(region, "GET", token, "/v3/users")["body"]["users"]
    projects = client.call(region, "GET", token, "/v3/projects")["body"]["projects"]
    assignments = client.call(region, "GET", token, "/v3/role_assignments?include_names=true")["body"][
        "role_assignments"]
    return {"users": sorted(u["name"] for u in users), "projects": sorted(p["name"] for p in projects),
            "assignments": sorted("{}|{}|{}".format(
                a.get("user", a.get("group", {})).get("name"), (a["scope"].get("project") or a["scope"].get("domain")
                                                              or {"name": "system"}).get("name"), a["role"]["name"])
                for a in assignments)}


def populate(client: LegacyClient, users: int = 6, projects: int = 3) -> dict:
    """Users, projects, member assignments and a TOTP user in the standalone."""
    token = client.admin_token(LEGACY)
    role = client.call(LEGACY, "GET", token, "/v3/roles?name=member")["body"]["roles"][0]["id"]
    made = {"projects": [], "users": []}
    pids = []
    for i in range(projects):
        p = client.call(LEGACY, "POST", token, "/v3/projects", {"project": {"name": f"legacy-p{i}",
                                                                             "domain_id": "default"}})
        pids.append(p["body"]["project"]["id"])
        made["projects"].append(p["status"])
    passwords = {}
    for i in range(users):
        name, password = f"legacy-u{i}", "pw-" + uuid.uuid4().hex
        u = client.call(LEGACY, "POST", token, "/v3/users",
                        {"user": {"name": name, "password": password, "domain_id": "default"}}, secret=True)
        uid = u["body"]["user"]["id"]
        made["users"].append(u["status"])
        client.call(LEGACY, "PUT", token, f"/v3/projects/{pids[i % projects]}/users/{uid}/roles/{role}")
        passwords[name] = (password, f"legacy-p{i % projects}")
    name, password, secret, setup = client._totp_user(LEGACY)
    return {"passwords": passwords, "totp": (name, password, secret), "setup": made, "totp_setup": setup}


def key_dirs(standalone: Standalone) -> dict[str, Path]:
    etc = standalone.path("/etc/keystone")
    return {"fernet_keys": etc / "fernet-keys", "credential_keys": etc / "credential-keys"}


def import_keys(work: Path, fernet: Path, credential: Path) -> tuple[dict, str]:
    """The operator's command: returns the importedKeys value it wrote and what it printed."""
    out = work / "imported-keys.json"
    out.unlink(missing_ok=True)
    res = subprocess.run([sys.executable, "-m", "keystone_multiregion", "import-keys", "--fernet", str(fernet),
                          "--credential", str(credential), "--out", str(out)], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    if res.returncode != 0:
        raise LabError(f"import-keys failed: {res.stderr.strip()}")
    return json.loads(out.read_text()), res.stdout


def push_everywhere(dep, repos: dict, imported: bool = True) -> list[str]:
    """The region stacks' key push to every Keystone node, with --import-digest as a stack with
    importedKeys passes it. Returns the problems."""
    command = install_keys_command(digests(repos) if imported else None)
    problems = []
    for node in dep.topo.nodes(role="keystone"):
        out = ssh(dep, node.name, command, input=payload(repos))
        if out.returncode != 0:
            problems.append(f"key push to {node.name}: {out.stderr.strip()[-300:]}")
    return problems


def flush_everywhere(dep) -> list[str]:
    problems = []
    for region in dep.topo.regions:
        nodes = dep.topo.nodes(region.name, "keystone")
        if nodes:
            out = dep.lab.procs.run(nodes[0].name, TOOL + ["flush-cache"], check=False, timeout=30)
            if out.returncode != 0:
                problems.append(f"flush-cache on {nodes[0].name}: {out.stdout.strip()} {out.stderr.strip()}")
    return problems


def import_db(dep, dump: str, replace: bool = True) -> tuple[dict | None, str]:
    node = dep.topo.nodes(dep.topo.bootstrap_region, "keystone")[0].name
    out = dep.lab.procs.run(node, TOOL + ["import-db"] + (["--replace"] if replace else []), input=dump,
                            timeout=900, check=False)
    lines = out.stdout.strip().splitlines()
    return (json.loads(lines[-1]) if out.returncode == 0 and lines else None), out.stderr.strip()


def lab_dump(dep) -> str:
    galera = dep.topo.nodes(dep.topo.bootstrap_region, "galera")[0].name
    return dep.lab.procs.run(galera, ["mariadb-dump", "--protocol=socket", "-S", "/run/mysqld/mysqld.sock", "-u",
                                      "root", "--single-transaction", "keystone"], timeout=300).stdout


def drill_move_in(dep, log=print) -> DrillResult:
    """B5: see the module's docstring. The lab is restored at the end, whatever happened."""
    name = "B5. an existing Keystone moved in: its tokens, TOTP users and data served by every region"
    lab_client = KeystoneDrills(dep)
    password = dep.secrets()["keystone_admin_password"]
    # The standalone's admin has the deployment's admin password (set in the source before
    # the dump): the stacks' catalog registration logs in as admin with it.
    standalone = Standalone(dep, password)
    client = LegacyClient(dep, standalone)
    measured, problems = {}, []
    work = Path(dep.lab.labdir) / "migration"
    work.mkdir(mode=0o700, exist_ok=True)
    before_repos = lab_client._repos()  # what the lab's nodes hold now (drills may have rotated)
    t = time.monotonic()
    saved = lab_dump(dep)
    measured["lab_dump_s"] = round(time.monotonic() - t, 1)
    try:
        measured.update(standalone.up(log))
        t = time.monotonic()
        data = populate(client)
        measured["populate_s"] = round(time.monotonic() - t, 1)
        source = inventory(client, LEGACY)
        measured["source"] = {k: len(v) for k, v in source.items()}
        who, (upw, uproject) = next(iter(data["passwords"].items()))
        old = client.ks(LEGACY, "token", LEGACY_URL, who, upw, uproject)
        if old.get("status") != 201:
            raise LabError(f"the standalone issued no token: {old}")
        old_token = old["token"]
        tname, tpw, tsecret = data["totp"]
        mfa = client.ks(LEGACY, "token", LEGACY_URL, tname, tpw, "admin", "--passcode", totp(tsecret))
        measured["standalone_totp_login"] = mfa.get("status")

        # -- the move ---------------------------------------------------------------------
        t = time.monotonic()
        dump = standalone.run(["mariadb-dump", "--protocol=socket", "-S", "/run/mysqld/mysqld.sock", "-u", "root",
                               "--single-transaction", "keystone"], timeout=300).stdout
        measured["dump_bytes"] = len(dump)
        imported, printed = import_keys(work, *key_dirs(standalone).values())
        repos = {r: imported[r] for r in ("fernet_keys", "credential_keys")}
        measured["import_keys_printed"] = printed.strip().splitlines()[0] if printed.strip() else ""
        result, err = import_db(dep, dump)
        measured["import_db"] = result
        measured["import_db_notes"] = err[-400:]
        if result is None:
            raise LabError(f"import-db failed: {err[-800:]}")
        problems += push_everywhere(dep, repos)
        problems += flush_everywhere(dep)
        measured["move_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        dep.register_catalog(log=lambda s: None)
        measured["catalog_s"] = round(time.monotonic() - t, 1)

        # -- what every region serves -------------------------------------------------------
        measured["old_token"], measured["totp_login"], measured["inventory_equal"] = {}, {}, {}
        for region in lab_client.regions:
            v = client.validate(region, old_token, old_token)
            measured["old_token"][region] = v.get("status")
            if v.get("status") != 200:
                problems.append(f"{region}: the standalone's token answered {v.get('status')} {v.get('error', '')}")

            def login(region=region):
                out = client.ks(region, "token", client.url(region), tname, tpw, "admin", "--passcode",
                                totp(tsecret))
                login.last = out
                return out.get("status") == 201
            # A code may straddle a 30 s step: at most three tries, 2 s apart.
            ok = wait_until(login, timeout=20, interval=2.0)
            measured["totp_login"][region] = login.last.get("status")
            if not ok:
                problems.append(f"{region}: the TOTP user's password+TOTP login answered {login.last}")
            got = inventory(client, region)
            equal = got == source
            measured["inventory_equal"][region] = equal
            if not equal:
                missing = {k: sorted(set(source[k]) - set(got[k])) for k in source}
                extra = {k: sorted(set(got[k]) - set(source[k])) for k in source}
                problems.append(f"{region}: missing {missing}, extra {extra}")
        measured["checks_s"] = round(time.monotonic() - t, 1)
    finally:
        # -- the lab as it was ------------------------------------------------------------
        t = time.monotonic()
        restored, err = import_db(dep, saved)
        if restored is None:
            problems.append(f"restoring the lab's database failed: {err[-500:]}")
        problems += push_everywhere(dep, before_repos)
        problems += flush_everywhere(dep)
        standalone.down()
        measured["restore_s"] = round(time.monotonic() - t, 1)
    return DrillResult(name, not problems, measured, problems)
