"""Moving an existing Keystone in (issue #14, item 7): the key import (import-keys, the shared
stack's importedKeys, rotation on from imported keys), the node's database import
(keystone-node import-db: the dump checked before anything changes) and the push that lets
the nodes take the imported keys."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import stat

import pytest

from keystone_multiregion.__main__ import main
from keystone_multiregion.keys import digest, digests, imported_repository, primary, repository
from keystone_multiregion.migration import KeyImportError, check_imported_config, imported_value, read_key_dir
from keystone_multiregion.render import AGENTS

KEYS = [base64.urlsafe_b64encode(bytes([i]) * 32).decode() for i in range(20)]


def key_dir(path, files: dict[str, str]):
    path.mkdir()
    for name, key in files.items():
        (path / name).write_text(key + "\n")
    return path


# -- rotation on from imported keys --------------------------------------------------------
def test_imported_repository_without_rotation_is_the_import_exactly():
    imported = {"0": KEYS[5], "3": KEYS[2], "4": KEYS[3], "5": KEYS[4]}  # a source rotated a few times
    assert imported_repository(imported, [], 0, 3) == imported  # more than max_active: kept until a rotation
    assert primary(imported_repository(imported, [], 0, 3)) == KEYS[4]


def test_imported_repository_rotates_as_keystone_does():
    imported = {"0": KEYS[5], "4": KEYS[3], "5": KEYS[4]}
    once = imported_repository(imported, [KEYS[9]], 1, 3)
    assert once == {"0": KEYS[9], "6": KEYS[5], "5": KEYS[4]}  # the staged key became primary 6
    assert primary(once) == imported["0"]
    # Rotating a repository that was itself computed from a key sequence gives the same files
    # as computing it after all the rotations.
    for r in range(4):
        for more in range(4):
            assert imported_repository(repository(KEYS, r, 5), KEYS[r + 2:], more, 5) == repository(KEYS, r + more, 5)


# -- key directories -----------------------------------------------------------------------
def test_a_keystone_key_directory_is_read_as_keystone_reads_it(tmp_path):
    d = key_dir(tmp_path / "fernet", {"0": KEYS[1], "1": KEYS[0]})
    (d / "README").write_text("not a key: Keystone skips it\n")
    assert read_key_dir("--fernet", d) == {"0": KEYS[1], "1": KEYS[0]}


@pytest.mark.parametrize("files,problem", [
    ({"0": KEYS[1], "1": "c2hvcnQ="}, "file 1 is not a Fernet key (44 characters of URL-safe base64 of 32 bytes)"),
    ({"0": KEYS[1], "1": KEYS[0].replace("-", "+") + "x"}, "file 1 is not a Fernet key"),
    ({"1": KEYS[0], "2": KEYS[1]}, "no staged key (file 0)"),
    ({"0": KEYS[1]}, "only the staged key 0, no primary"),
    ({"0": KEYS[1], "01": KEYS[0]}, "file '01' is a key number to Keystone but not a plain one"),
    ({"0": KEYS[1], "1": KEYS[1]}, "the same key appears in two files"),
])
def test_a_malformed_repository_is_refused_with_one_line(tmp_path, capsys, files, problem):
    d = key_dir(tmp_path / "fernet", files)
    c = key_dir(tmp_path / "credential", {"0": KEYS[11], "1": KEYS[10]})
    out = tmp_path / "imported.json"
    assert main(["import-keys", "--fernet", str(d), "--credential", str(c), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --fernet {d}: ") and problem in err and err.count("\n") == 1
    assert not out.exists()  # nothing written


def test_the_same_directory_twice_is_refused(tmp_path, capsys):
    d = key_dir(tmp_path / "fernet", {"0": KEYS[1], "1": KEYS[0]})
    assert main(["import-keys", "--fernet", str(d), "--credential", str(d), "--out", str(tmp_path / "o")]) == 2
    assert "--credential: holds keys of --fernet (the same directory given twice?)" in capsys.readouterr().err


def test_import_keys_writes_the_config_value_and_prints_no_key(tmp_path, capsys):
    fernet = key_dir(tmp_path / "fernet", {"0": KEYS[5], "4": KEYS[3], "5": KEYS[4]})
    credential = key_dir(tmp_path / "credential", {"0": KEYS[11], "1": KEYS[10]})
    project = tmp_path / "project"
    project.mkdir()
    (project / "Pulumi.shared.yaml").write_text("config:\n  keystone-multiregion:shared: true\n"
                                                "  keystone-multiregion:fernetRotations: 2\n")
    out = tmp_path / "imported.json"
    assert main(["--project-dir", str(project), "import-keys", "--fernet", str(fernet), "--credential",
                 str(credential), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    value = json.loads(out.read_text())
    assert value == {"fernet_keys": {"0": KEYS[5], "4": KEYS[3], "5": KEYS[4]},
                     "credential_keys": {"0": KEYS[11], "1": KEYS[10]}, "fernet_rotations": 2,
                     "credential_rotations": 0}
    assert not [k for k in KEYS if k in printed]
    assert f"fernet_keys: 3 keys (files 0, 4, 5; primary 5, staged 0), digest {digest(value['fernet_keys'])}" in printed
    assert f"pulumi config set --secret importedKeys -s shared < {out} && shred -u {out}" in printed
    # Never over an existing file.
    assert main(["import-keys", "--fernet", str(fernet), "--credential", str(credential), "--out", str(out)]) == 2
    assert f"--out {out}: exists" in capsys.readouterr().err


# -- the shared stack ----------------------------------------------------------------------
IMPORTED = {"fernet_keys": {"0": KEYS[5], "4": KEYS[3], "5": KEYS[4]}, "credential_keys": {"0": KEYS[11], "1": KEYS[10]},
            "fernet_rotations": 0, "credential_rotations": 0}


def _shared(config, secret=("sshPrivateKey", "backupStore", "importedKeys")):
    from pulumi.runtime.sync_await import _sync_await
    from pulumi_harness import run_program
    run = run_program("shared", {"shared": True, **config}, secret_config=secret)
    return run, _sync_await(run.exports["secrets"].future())


def test_the_shared_stack_exports_exactly_the_imported_keys():
    run, secrets = _shared({"importedKeys": IMPORTED})
    assert secrets["fernet_keys"] == IMPORTED["fernet_keys"]
    assert secrets["credential_keys"] == IMPORTED["credential_keys"]
    assert secrets["imported_key_digests"] == digests({r: IMPORTED[r] for r in ("fernet_keys", "credential_keys")})
    # The generated sequence stays declared (its keys are protected): nothing is deleted.
    keys = sorted(r.name for r in run.of_type("random:index/randomBytes:RandomBytes"))
    assert keys == ["credential-keys-0", "credential-keys-1", "fernet-keys-0", "fernet-keys-1"]


def test_rotations_continue_from_the_imported_keys():
    _, secrets = _shared({"importedKeys": {**IMPORTED, "fernet_rotations": 2}, "fernetRotations": 3})
    fernet = secrets["fernet_keys"]
    assert primary(fernet) == IMPORTED["fernet_keys"]["0"] and fernet["6"] == IMPORTED["fernet_keys"]["0"]
    assert fernet["5"] == KEYS[4] and fernet["4"] == KEYS[3]  # max_active 5 (topology) keeps them
    # The new staged key: the generated sequence's fourth (0..2 are the deployment's own, as of
    # its 2 rotations at the import), URL-safe.
    assert fernet["0"] == "bW9jay1fernet-keys-4-_="
    assert secrets["credential_keys"] == IMPORTED["credential_keys"]


@pytest.mark.parametrize("config,secret,problem", [
    ({"importedKeys": IMPORTED}, ("sshPrivateKey", "backupStore"), "config: keystone-multiregion:importedKeys is "
     "not a secret (the keys would sit in clear text in Pulumi.shared.yaml); run `python -m keystone_multiregion "
     "import-keys"),
    ({"importedKeys": {**IMPORTED, "fernet_keys": {"0": KEYS[1], "1": "x"}}}, None,
     "config: keystone-multiregion:importedKeys.fernet_keys: file 1 is not a Fernet key"),
    ({"importedKeys": {"fernet_keys": IMPORTED["fernet_keys"]}}, None,
     "config: keystone-multiregion:importedKeys lacks credential_keys"),
    ({"importedKeys": {**IMPORTED, "fernet_rotations": 4}, "fernetRotations": 1}, None,
     "config: keystone-multiregion:fernetRotations is 1, below the 4 recorded when the keys were imported"),
])
def test_bad_imported_keys_fail_before_any_resource(config, secret, problem):
    from pulumi_harness import last_registered
    with pytest.raises(Exception) as info:
        _shared(config, **({"secret": secret} if secret else {}))
    assert str(info.value).startswith(problem) and "\n" not in str(info.value)
    assert last_registered() in ([], None) or not [r for r in last_registered() if r.type.startswith("random:")]


def test_the_push_lets_nodes_take_the_imported_keys():
    from keystone_multiregion.roles.keystone import install_keys_command
    from pulumi_harness import MOCK_CA_KEY, MOCK_PUBLIC_DEV_CA_KEY, MOCK_SECRETS, run_program
    repos = {r: IMPORTED[r] for r in ("fernet_keys", "credential_keys")}
    secrets = {**MOCK_SECRETS, **repos, "imported_key_digests": digests(repos)}
    run = run_program("region-a", {"region": "region-a"}, shared_outputs={
        "secrets": secrets, "galera_ca_key": MOCK_CA_KEY, "public_dev_ca_key": MOCK_PUBLIC_DEV_CA_KEY})
    cmds = [c for c in run.of_type("command:remote:Command") if c.name.startswith("keys-")]
    assert cmds
    for cmd in cmds:
        assert cmd.inputs["create"] == install_keys_command(digests(repos))
        assert f"--import-digest=fernet_keys={digest(repos['fernet_keys'])}" in cmd.inputs["create"]


def test_check_imported_config_without_the_config_is_none():
    assert check_imported_config(None, False, 0, 0) is None
    with pytest.raises(KeyImportError):
        imported_value({"0": KEYS[0], "1": KEYS[1]}, {"0": KEYS[1], "1": KEYS[2]})


# -- the node: keystone-node install-keys --import-digest, import-db -----------------------
@pytest.fixture
def tool():
    spec = importlib.util.spec_from_file_location("keystone_node_migration", AGENTS / "keystone-node.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DUMP = """-- MariaDB dump 10.19  Distrib 10.11.6-MariaDB
/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */;
/*!40014 SET @OLD_FOREIGN_KEY_CHECKS=@@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS=0 */;

--
-- Table structure for table `alembic_version`
--

DROP TABLE IF EXISTS `alembic_version`;
CREATE TABLE `alembic_version` (
  `version_num` varchar(32) NOT NULL,
  PRIMARY KEY (`version_num`)
) ENGINE=MyISAM DEFAULT CHARSET=utf8mb3 COLLATE=utf8mb3_general_ci;
LOCK TABLES `alembic_version` WRITE;
/*!40000 ALTER TABLE `alembic_version` DISABLE KEYS */;
INSERT INTO `alembic_version` VALUES ('29e87d24a316');
/*!40000 ALTER TABLE `alembic_version` ENABLE KEYS */;
UNLOCK TABLES;
"""
TABLE = """DROP TABLE IF EXISTS `{t}`;
CREATE TABLE `{t}` (
  `id` varchar(64) NOT NULL,
  `extra` text DEFAULT NULL,
  PRIMARY KEY (`id`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb3;
INSERT INTO `{t}` VALUES ('a','{{\\"x\\": \\"semi;\\\\ncolon;\\"}}');
"""
KEYSTONE_DUMP = DUMP + "".join(TABLE.format(t=t) for t in ("user", "project", "assignment", "credential"))


def test_a_keystone_dump_is_prepared_for_galera(tool):
    statements, notes, tables = tool.prepare_dump(io.StringIO(KEYSTONE_DUMP).readlines())
    assert tables == ["alembic_version", "user", "project", "assignment", "credential"]
    assert notes == ["table alembic_version: ENGINE=MyISAM converted to InnoDB (Galera replicates InnoDB only)"]
    assert not [s for s in statements if "LOCK TABLES" in s.upper()]
    assert [s for s in statements if s.startswith("CREATE TABLE `alembic_version`")][0].count("ENGINE=InnoDB") == 1
    assert len([s for s in statements if s.startswith("INSERT")]) == 5


@pytest.mark.parametrize("change,problem", [
    (lambda d: d.replace("  PRIMARY KEY (`version_num`)\n", "  KEY (`version_num`)\n"),
     "table alembic_version has no primary key, which Galera needs"),
    (lambda d: "USE `keystone`;\n" + d, "the dump names databases (USE / CREATE DATABASE"),
    (lambda d: d.replace("ENGINE=MyISAM", "ENGINE=MEMORY"), "table alembic_version uses ENGINE=MEMORY"),
    (lambda d: "SET @@SESSION.SQL_LOG_BIN= 0;\n" + d, "the dump turns the binary log off"),
    (lambda d: d.replace("CREATE TABLE `credential`", "CREATE TABLE `credentials`"),
     "this is not a dump of Keystone's database (no table credential)"),
    (lambda d: d[:-3], "the dump ends inside a statement (it is truncated)"),
])
def test_a_dump_galera_cannot_take_is_refused_before_anything_changes(tool, monkeypatch, capsys, change, problem):
    monkeypatch.setattr("sys.stdin", io.StringIO(change(KEYSTONE_DUMP)))
    monkeypatch.setattr(tool, "db_connect", lambda: pytest.fail("connected although the dump is refused"))
    assert tool.main(["import-db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"keystone-node: refused: {problem}") and err.endswith("(nothing was changed)\n")
    assert err.count("\n") == 1


class FakeDb:
    """Just enough of a PyMySQL connection for import-db."""

    def __init__(self, counts):
        self.counts, self.executed, self.tables = counts, [], ["user", "project", "assignment", "credential"]
        self.marker = None

    def cursor(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass

    def execute(self, statement, args=None):
        self.executed.append(statement)
        self._last = statement

    def fetchall(self):
        return [(t,) for t in self.tables] if self._last == "SHOW TABLES" else []

    def fetchone(self):
        if self._last.startswith("SELECT deployment"):
            return self.marker
        table = self._last.split(" FROM ")[1].split()[0]
        return (self.counts.get(table, 0),)


def test_import_db_refuses_a_database_with_identity_data_unless_replace(tool, monkeypatch, capsys):
    db = FakeDb({"user": 2, "project": 1, "assignment": 3})
    monkeypatch.setattr("sys.stdin", io.StringIO(KEYSTONE_DUMP))
    assert tool.cmd_import_db(tool.argparse.Namespace(dump=None, replace=False), connect=lambda: db) == 2
    err = capsys.readouterr().err
    assert err == ("keystone-node: refused: the keystone database already holds identity data (2 users, 1 projects, "
                   "3 role assignments); give --replace to drop every table of it and load the dump instead "
                   "(nothing was changed)\n")
    assert not [s for s in db.executed if not s.startswith(("SELECT", "SHOW"))]


def test_import_db_replace_loads_the_dump_syncs_and_marks_the_bootstrap_done(tool, monkeypatch, capsys):
    db = FakeDb({"user": 2})
    synced = []
    monkeypatch.setattr("sys.stdin", io.StringIO(KEYSTONE_DUMP))
    monkeypatch.setattr(tool, "facts", lambda: {"name": "keystone-a-1", "deployment": "keystone"})
    assert tool.cmd_import_db(tool.argparse.Namespace(dump=None, replace=True), connect=lambda: db,
                              manage=synced.append) == 0
    assert synced == ["db_sync"]
    drops = [s for s in db.executed if s.startswith("DROP TABLE IF EXISTS")]
    assert drops[:4] == ["DROP TABLE IF EXISTS `user`", "DROP TABLE IF EXISTS `project`",
                         "DROP TABLE IF EXISTS `assignment`", "DROP TABLE IF EXISTS `credential`"]
    assert any(s.startswith("INSERT IGNORE INTO keystone_multiregion_bootstrap") for s in db.executed)
    out = json.loads(capsys.readouterr().out)
    assert out["tables"] == 5 and out["converted"] == 1 and out["replaced_tables"] == 4


def test_a_dump_file_must_be_roots_alone(tool, tmp_path, capsys):
    path = tmp_path / "keystone.sql"
    path.write_text(KEYSTONE_DUMP)
    os.chmod(path, 0o644)
    assert tool.main(["import-db", "--dump", str(path)]) == 2
    assert "must be root's alone" in capsys.readouterr().err


def test_install_keys_takes_an_imported_repository_named_by_its_digest(tmp_path, monkeypatch, capsys, tool):
    monkeypatch.setattr(tool, "KEY_DIRS", {r: str(tmp_path / "etc" / r) for r in ("fernet_keys", "credential_keys")})
    monkeypatch.setattr(tool, "PUSHED", str(tmp_path / "pushed" / "key-digests.json"))
    monkeypatch.setattr(tool, "PREPARED", str(tmp_path / "prepared"))
    monkeypatch.setattr(tool, "LOCK", str(tmp_path / "pushed" / "install-keys.lock"))
    monkeypatch.setattr(tool, "_keystone_gid", lambda: os.getgid())
    monkeypatch.setattr(tool, "credential_hashes_in_use", lambda: {})
    (tmp_path / "prepared").write_text("prepared\n")
    (tmp_path / "etc").mkdir()
    from keystone_multiregion.keys import payload
    own = {"fernet_keys": repository(KEYS, 1, 5), "credential_keys": repository(KEYS[10:], 0, 3)}
    imported = {r: IMPORTED[r] for r in ("fernet_keys", "credential_keys")}

    def push(repos, *extra):
        monkeypatch.setattr("sys.stdin", io.StringIO(payload(repos)))
        return tool.main(["install-keys", "--timeout", "0.2", *extra])
    assert push(own) == 0
    capsys.readouterr()
    assert push(imported) == 2  # never staged here: refused without the digest
    assert "the new primary key (file 5) is not in this node's repository" in capsys.readouterr().err
    wrong = {**digests(imported), "fernet_keys": "0" * 64}
    assert push(imported, *[f"--import-digest={r}={d}" for r, d in wrong.items()]) == 2
    capsys.readouterr()
    assert push(imported, *[f"--import-digest={r}={d}" for r, d in digests(imported).items()]) == 0
    assert "installed as the imported repository" in capsys.readouterr().err
    assert tool.read_repository(tool.KEY_DIRS["fernet_keys"]) == imported["fernet_keys"]
    assert tool.main(["key-check"]) == 0
