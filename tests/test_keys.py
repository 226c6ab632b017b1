"""Fernet key repositories across rotations: identical everywhere, never breaking validation."""

import pytest

from keystone_multiregion.keys import primary, repository

KEYS = [f"K{i}" for i in range(12)]


def test_first_repository_has_a_staged_and_a_primary_key():
    assert repository(KEYS, 0, 5) == {"0": "K1", "1": "K0"}
    assert primary(repository(KEYS, 0, 5)) == "K0"


def test_rotation_promotes_the_staged_key_like_keystone_manage():
    # keystone-manage fernet_rotate: "0" becomes the next-numbered primary, a new "0" is staged.
    assert repository(KEYS, 1, 5) == {"0": "K2", "1": "K0", "2": "K1"}
    assert repository(KEYS, 2, 5) == {"0": "K3", "1": "K0", "2": "K1", "3": "K2"}


def test_oldest_keys_drop_out_beyond_max_active():
    repo = repository(KEYS, 6, 5)
    assert repo == {"0": "K7", "7": "K6", "6": "K5", "5": "K4", "4": "K3"}
    assert len(repo) == 5


@pytest.mark.parametrize("max_active", [3, 5, 8])
def test_every_rotation_is_safe_to_roll_out_region_by_region(max_active):
    for n in range(9):
        before, after = repository(KEYS, n, max_active), repository(KEYS, n + 1, max_active)
        # A region still on `before` validates what a region already on `after` signs...
        assert primary(after) in before.values()
        # ...and a region on `after` validates what a region still on `before` signs.
        assert primary(before) in after.values()


def test_bad_arguments():
    with pytest.raises(ValueError, match="3 rotations need 5 keys"):
        repository(KEYS[:4], 3, 5)
    with pytest.raises(ValueError, match="max_active must be at least 3"):
        repository(KEYS, 0, 2)


def test_digest_matches_the_node_tool_and_changes_with_any_key(tmp_path):
    import importlib.util
    from keystone_multiregion.keys import digest
    from keystone_multiregion.render import AGENTS
    spec = importlib.util.spec_from_file_location("keystone_node", AGENTS / "keystone-node.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    repo = repository(KEYS, 3, 5)
    on_disk = {name: key + "\n" for name, key in repo.items()}  # files end with a newline
    assert tool.repository_digest(on_disk) == digest(repo)
    assert digest({**repo, "0": "other"}) != digest(repo)
    assert digest(repository(KEYS, 4, 5)) != digest(repo)


# -- keystone-node install-keys / key-check: the node's end of the push ------------------

import base64
import io
import json
import os

from keystone_multiregion.keys import digests, payload

FERNET = [base64.urlsafe_b64encode(bytes([i]) * 32).decode() for i in range(8)]
# The group Keystone reads its keys with: a real other group when the tests run as root
# (nogroup), else the current one.
KEYSTONE_GID = 65534 if os.geteuid() == 0 else os.getgid()


@pytest.fixture
def node(tmp_path, monkeypatch):
    """keystone-node with its paths under tmp_path, run as the current user."""
    import importlib.util
    from keystone_multiregion.render import AGENTS
    spec = importlib.util.spec_from_file_location("keystone_node", AGENTS / "keystone-node.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(tool, "KEY_DIRS", {r: str(tmp_path / "etc" / r) for r in ("fernet_keys", "credential_keys")})
    monkeypatch.setattr(tool, "PUSHED", str(tmp_path / "pushed" / "key-digests.json"))
    monkeypatch.setattr(tool, "PREPARED", str(tmp_path / "prepared"))
    monkeypatch.setattr(tool, "LOCK", str(tmp_path / "pushed" / "install-keys.lock"))
    monkeypatch.setattr(tool, "_keystone_gid", lambda: KEYSTONE_GID)
    (tmp_path / "prepared").write_text("prepared\n")
    (tmp_path / "etc").mkdir()  # /etc/keystone, from the package

    def push(repos, *extra):
        monkeypatch.setattr("sys.stdin", io.StringIO(payload(repos)))
        return tool.main(["install-keys", "--timeout", "0.2", *extra])
    tool.push = push
    return tool


def repos_after(rotations):
    return {"fernet_keys": repository(FERNET, rotations, 4), "credential_keys": {"0": FERNET[7], "1": FERNET[6]}}


def test_install_keys_first_push_installs_and_reports_digests(node, capsys):
    assert node.push(repos_after(2)) == 0
    assert json.loads(capsys.readouterr().out) == digests(repos_after(2))
    d = node.KEY_DIRS["fernet_keys"]
    assert sorted(os.listdir(d)) == sorted(repos_after(2)["fernet_keys"])  # no temporary file left
    # Root's directory and files; Keystone (its group) reads them, nobody else.
    st = os.stat(d)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (os.geteuid(), KEYSTONE_GID, 0o750)
    for n in os.listdir(d):
        st = os.stat(os.path.join(d, n))
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (os.geteuid(), KEYSTONE_GID, 0o640)
    assert json.loads(open(node.PUSHED).read()) == digests(repos_after(2))
    assert node.main(["key-check"]) == 0


def test_install_keys_rotation_keeps_old_and_new_primary_at_every_step(node, monkeypatch):
    assert node.push(repos_after(2)) == 0
    old, new = repos_after(2)["fernet_keys"], repos_after(3)["fernet_keys"]
    seen, real_replace = [], os.replace

    def replace(src, dst, **kw):
        real_replace(src, dst, **kw)
        seen.append(set(node.read_repository(node.KEY_DIRS["fernet_keys"]).values()))
    monkeypatch.setattr(node.os, "replace", replace)
    assert node.push(repos_after(3)) == 0
    assert len(seen) >= 2
    # Keystone reading the directory mid-push validates tokens of the old and the new primary.
    assert all({primary(old), primary(new)} <= keys for keys in seen)
    assert node.read_repository(node.KEY_DIRS["fernet_keys"]) == new


def test_install_keys_refuses_a_skipped_rotation_and_changes_nothing(node, capsys):
    assert node.push(repos_after(1)) == 0
    capsys.readouterr()
    assert node.push(repos_after(3)) == 2
    err = capsys.readouterr().err
    assert "fernet_keys: the new primary key (file 4) is not in this node's repository" in err
    assert "nothing was changed" in err
    assert node.read_repository(node.KEY_DIRS["fernet_keys"]) == repos_after(1)["fernet_keys"]
    # Rolling back one rotation is safe (the old primary is still held) and accepted.
    assert node.push(repos_after(2)) == 0 and node.push(repos_after(1)) == 0
    # An operator who knows better can force it.
    assert node.push(repos_after(3), "--force") == 0


def test_install_keys_refuses_going_back_more_than_one_rotation(node, capsys):
    # Two rotations back, this node would sign with an old key and no longer hold the key
    # every other node signs with: refused like a skipped rotation; one back is the roll-back.
    assert node.push(repos_after(1)) == 0 and node.push(repos_after(2)) == 0 and node.push(repos_after(3)) == 0
    capsys.readouterr()
    assert node.push(repos_after(1)) == 2
    err = capsys.readouterr().err
    assert "fernet_keys: the pushed repository lacks this node's current primary key (file 4)" in err
    assert "goes back more than one rotation" in err and "nothing was changed" in err
    assert node.read_repository(node.KEY_DIRS["fernet_keys"]) == repos_after(3)["fernet_keys"]
    assert node.push(repos_after(2)) == 0  # one step back


@pytest.mark.parametrize("name", ["\u00b2", "\u0661", "01", "-1", " 1", "1_0"])
def test_install_keys_refuses_a_file_name_that_is_not_a_plain_key_number(node, capsys, name):
    # str.isdigit() accepts '²' and '١' (and int('²') raises): refused, in one line.
    repos = repos_after(1)
    repos["fernet_keys"][name] = FERNET[5]
    assert node.push(repos) == 2
    err = capsys.readouterr().err
    assert err == (f"keystone-node: refused: the pushed keys are malformed: fernet_keys: file name {name!r} is not "
                   "a key number (ASCII digits 0-9, no leading zero)\n")
    assert not os.path.exists(node.PUSHED)


def test_key_check_reads_odd_file_names_as_keystone_does(node, capsys):
    assert node.push(repos_after(1)) == 0
    d = node.KEY_DIRS["fernet_keys"]
    with open(os.path.join(d, "\u00b2"), "w") as fh:  # Keystone's int() refuses it: not a key, no crash
        fh.write(FERNET[6] + "\n")
    assert node.main(["key-check"]) == 0
    capsys.readouterr()
    with open(os.path.join(d, "\u0661"), "w") as fh:  # int('١') == 1: Keystone would load it as a key
        fh.write(FERNET[6] + "\n")
    assert node.main(["key-check"]) == 1
    assert "DRIFT" in capsys.readouterr().err
    assert node.push(repos_after(1)) == 0 and node.main(["key-check"]) == 0  # the push removes it
    assert sorted(os.listdir(d)) == sorted(repos_after(1)["fernet_keys"]) + ["\u00b2"]


# -- install-keys runs as root in directories Keystone reads: it never serves the keystone user

def _root_file(tmp_path):
    target = tmp_path / "root-only"
    target.write_text("root's\n")
    os.chmod(target, 0o600)
    return target, os.stat(target)


def _untouched(target, before):
    after = os.stat(target)
    return target.read_text() == "root's\n" and (after.st_uid, after.st_gid, after.st_mode) == \
        (before.st_uid, before.st_gid, before.st_mode)


def test_install_keys_never_follows_a_planted_temporary_file(node, tmp_path):
    # The old install-keys wrote `.N.tmp` by path and chowned it: a symlink planted there
    # made root overwrite the link's target and hand it to keystone.
    assert node.push(repos_after(1)) == 0
    d = node.KEY_DIRS["fernet_keys"]
    target, before = _root_file(tmp_path)
    for n in range(6):
        os.symlink(target, os.path.join(d, f".{n}.tmp"))
    assert node.push(repos_after(2)) == 0
    assert _untouched(target, before)
    assert node.read_repository(d) == repos_after(2)["fernet_keys"]


def test_install_keys_refuses_a_key_directory_others_can_write(node, tmp_path, capsys):
    assert node.push(repos_after(1)) == 0
    d = node.KEY_DIRS["fernet_keys"]
    os.chmod(d, 0o770)
    target, before = _root_file(tmp_path)
    os.symlink(target, os.path.join(d, ".0.tmp"))
    capsys.readouterr()
    assert node.push(repos_after(2)) == 2
    assert capsys.readouterr().err == (
        f"keystone-node: refused: {d} is writable by its group or others (mode 0770): a key directory must be "
        f"root's alone; run `keystone-node prepare` (root:keystone 0750) and push again (nothing was changed)\n")
    assert _untouched(target, before)
    os.chmod(d, 0o750)
    assert node.read_repository(d) == repos_after(1)["fernet_keys"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory to another user")
def test_install_keys_refuses_a_key_directory_keystone_owns(node, tmp_path, capsys):
    # The layout before: /etc/keystone/fernet-keys keystone:keystone 0700.
    assert node.push(repos_after(1)) == 0
    d = node.KEY_DIRS["fernet_keys"]
    os.chown(d, 65534, 65534)
    os.chmod(d, 0o700)
    target, before = _root_file(tmp_path)
    for n in range(6):
        os.symlink(target, os.path.join(d, f".{n}.tmp"))
    capsys.readouterr()
    assert node.push(repos_after(2)) == 2
    assert f"refused: {d} belongs to uid 65534, not root: a key directory must be root's alone" in \
        capsys.readouterr().err
    assert _untouched(target, before)


def test_install_keys_refuses_a_key_directory_that_is_a_symlink(node, tmp_path, capsys):
    d = node.KEY_DIRS["fernet_keys"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, d)
    assert node.push(repos_after(1)) == 2
    assert f"refused: {d} is a symbolic link, not a directory" in capsys.readouterr().err
    assert os.listdir(elsewhere) == []
    assert not os.path.exists(node.PUSHED)


def test_install_keys_waits_for_another_push_to_finish(node, capsys):
    import fcntl
    os.makedirs(os.path.dirname(node.LOCK), exist_ok=True)
    with open(node.LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert node.push(repos_after(1)) == 1
        assert f"another install-keys holds {node.LOCK}" in capsys.readouterr().err
        assert not os.path.exists(node.PUSHED)
    assert node.push(repos_after(1)) == 0
    assert os.stat(node.LOCK).st_mode & 0o777 == 0o600


def test_install_keys_refuses_malformed_payloads(node, capsys):
    bad_key = repos_after(0)
    bad_key["fernet_keys"]["0"] = "not-a-fernet-key"
    assert node.push(bad_key) == 2
    assert "fernet_keys/0: not a Fernet key" in capsys.readouterr().err
    assert node.push({"fernet_keys": repos_after(0)["fernet_keys"]}) == 2
    assert "expected exactly the repositories ['credential_keys', 'fernet_keys']" in capsys.readouterr().err
    assert not os.path.exists(node.PUSHED)


def test_install_keys_waits_for_prepare_then_gives_up(node, capsys):
    os.unlink(node.PREPARED)
    assert node.push(repos_after(0)) == 1
    assert "keystone-node prepare` has not run" in capsys.readouterr().err


def test_key_check_reports_the_repository_that_drifted(node, tmp_path, monkeypatch, capsys):
    facts = tmp_path / "node.json"
    facts.write_text(json.dumps({"name": "keystone-a-1", "region": "a"}))
    monkeypatch.setattr(node, "FACTS", str(facts))
    assert node.main(["key-check"]) == 1
    assert "no keys were pushed to this node" in capsys.readouterr().err
    assert node.push(repos_after(1)) == 0
    with open(os.path.join(node.KEY_DIRS["fernet_keys"], "0"), "w") as fh:
        fh.write(FERNET[6] + "\n")
    capsys.readouterr()
    assert node.main(["key-check"]) == 1
    err = capsys.readouterr().err
    assert f"DRIFT: {node.KEY_DIRS['fernet_keys']} differs from what the stack pushed" in err
    assert "credential" not in err
    assert "--target <URN of keys-keystone-a-1> --replace" in err  # how to push to this node again
    assert node.push(repos_after(1)) == 0  # pushing again repairs it
    assert node.main(["key-check"]) == 0


def test_bootstrap_waits_for_the_keys_then_says_what_to_do(node, tmp_path, monkeypatch, capsys):
    # keystone-manage bootstrap refuses to run without Fernet keys (seen in the lab).
    facts = tmp_path / "node.json"
    facts.write_text(json.dumps({"name": "keystone-a-1", "region": "a", "keystone_bootstrap": True}))
    monkeypatch.setattr(node, "FACTS", str(facts))
    assert node.main(["bootstrap", "--timeout", "0.1"]) == 1
    assert "no keys were pushed within 0.1s" in capsys.readouterr().err


# -- credential rotation: never strand a credential ----------------------------------------

def credential_repos(rotations):
    from keystone_multiregion.keys import CREDENTIAL_MAX_ACTIVE
    return {"fernet_keys": repository(FERNET, 1, 4), "credential_keys": repository(FERNET, rotations,
                                                                                   CREDENTIAL_MAX_ACTIVE)}


def test_credential_rotation_keeps_the_previous_primary_and_drops_the_one_before():
    r1, r2 = credential_repos(1)["credential_keys"], credential_repos(2)["credential_keys"]
    assert sorted(r1.values()) == sorted([FERNET[0], FERNET[1], FERNET[2]])
    assert FERNET[0] not in r2.values() and {FERNET[1], FERNET[2], FERNET[3]} == set(r2.values())


def test_credential_rotation_refused_while_credentials_use_a_dropped_key(node, monkeypatch, capsys):
    import hashlib
    assert node.push(credential_repos(0)) == 0 and node.push(credential_repos(1)) == 0  # drops nothing
    # Keystone's key_hash: sha1 of the primary key as read from its file (with its newline).
    in_use = {hashlib.sha1((FERNET[0] + "\n").encode()).hexdigest(): 2}
    monkeypatch.setattr(node, "credential_hashes_in_use", lambda: in_use)
    capsys.readouterr()
    assert node.push(credential_repos(2)) == 2
    err = capsys.readouterr().err
    assert "credential_keys: 2 credential(s) (TOTP secrets) are still encrypted with a key this repository drops" in err
    assert "keystone-node credential-migrate" in err
    assert node.read_repository(node.KEY_DIRS["credential_keys"]) == credential_repos(1)["credential_keys"]
    # After credential_migrate every credential uses the new primary: the rotation goes on.
    in_use.clear()
    in_use[hashlib.sha1((FERNET[1] + "\n").encode()).hexdigest()] = 2
    assert node.push(credential_repos(2)) == 0


def test_credential_rotation_refused_when_the_database_cannot_be_asked(node, monkeypatch, capsys):
    assert node.push(credential_repos(0)) == 0 and node.push(credential_repos(1)) == 0

    def unreachable():
        raise OSError("Can't connect to MySQL server")
    monkeypatch.setattr(node, "credential_hashes_in_use", unreachable)
    capsys.readouterr()
    assert node.push(credential_repos(2)) == 2
    assert "could not be checked (OSError: Can't connect to MySQL server)" in capsys.readouterr().err


def test_force_says_what_it_overrides_and_skips(node, monkeypatch, capsys):
    assert node.push(credential_repos(0)) == 0 and node.push(credential_repos(1)) == 0

    def must_not_be_asked():
        raise AssertionError("the database was asked")
    monkeypatch.setattr(node, "credential_hashes_in_use", must_not_be_asked)
    capsys.readouterr()
    # Skips a Fernet rotation and drops a credential key: both go through, both said.
    forced = {"fernet_keys": repository(FERNET, 3, 4), "credential_keys": credential_repos(2)["credential_keys"]}
    assert node.push(forced, "--force") == 0
    err = capsys.readouterr().err
    assert "keystone-node: --force: installing although: fernet_keys: the new primary key (file 4)" in err
    assert ("keystone-node: --force: skipped the credential check: this repository drops 1 credential key(s); "
            "whether credentials are still encrypted with them was not checked") in err
    assert node.read_repository(node.KEY_DIRS["fernet_keys"]) == forced["fernet_keys"]
