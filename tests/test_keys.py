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
    from keystone_multiregion.render import TEMPLATES
    spec = importlib.util.spec_from_file_location("keystone_node", TEMPLATES / "keystone/keystone-node.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    repo = repository(KEYS, 3, 5)
    on_disk = {name: key + "\n" for name, key in repo.items()}  # files end with a newline
    assert tool.repository_digest(on_disk) == digest(repo)
    assert digest({**repo, "0": "other"}) != digest(repo)
    assert digest(repository(KEYS, 4, 5)) != digest(repo)
