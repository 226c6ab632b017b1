"""Fernet key repositories across rotations, computed once for every region.

Keystone's own rotation (keystone-manage fernet_rotate) promotes the staged key "0" to the
next-numbered primary, stages a new "0", and drops the oldest keys beyond max_active_keys.
Run on each node it would give every region different keys; here the repository after N
rotations is a pure function of one key sequence, so every region gets the same files.

Safety: the key that becomes primary at rotation N+1 was already staged (and so used for
validation) in every region at rotation N. Rolling N+1 out region by region therefore
never breaks validation, provided N+1 has reached every region before N+2 starts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Mapping


# The credential repository keeps the staged key, the primary and the previous primary: a
# credential rotation is complete once `keystone-node credential-migrate` has re-encrypted
# every credential with the new primary, before the next rotation drops the previous one.
CREDENTIAL_MAX_ACTIVE = 3


def repository(keys: list[str], rotations: int, max_active: int) -> dict[str, str]:
    """The key repository after `rotations` rotations of `keys` (keys[0] the first primary,
    keys[1] the first staged key, keys[i] the key staged by rotation i-1): file name -> key."""
    if rotations < 0:
        raise ValueError("rotations must be 0 or more")
    if len(keys) < rotations + 2:
        raise ValueError(f"{rotations} rotations need {rotations + 2} keys, got {len(keys)}")
    if max_active < 3:
        # With only the staged and the primary key, a rotation drops the key that signed
        # every live token: regions already rotated would refuse them.
        raise ValueError("max_active must be at least 3 (staged, primary, and the previous primary)")
    repo = {"0": keys[rotations + 1]}
    for j in range(rotations, -1, -1):  # the primary first, then older keys, newest first
        if len(repo) >= max_active:
            break
        repo[str(j + 1)] = keys[j]
    return repo


def primary(repo: dict[str, str]) -> str:
    """The key that signs: the highest-numbered one."""
    return repo[str(max(int(k) for k in repo))]


def digest(repo: dict[str, str]) -> str:
    """sha256 over `name:key` lines in name order: what `keystone-node key-digest` prints for
    a node's repository, so a node that drifted from the others (or from the stack) shows."""
    lines = "".join(f"{name}:{repo[name].strip()}\n" for name in sorted(repo, key=int))
    return hashlib.sha256(lines.encode()).hexdigest()


# -- pushing the repositories to running nodes -----------------------------------------
# Keystone nodes do not get their keys from cloud-init: the region stack pushes them over
# SSH (pulumi-command) to `keystone-node install-keys`, which reads this payload on stdin.
# So a rotation changes files on running nodes, never their cloud-init, and rebuilds none.

def payload(repos: Mapping[str, Mapping[str, str]]) -> str:
    """What `keystone-node install-keys` reads on stdin: {repository: {file name: key}}."""
    return json.dumps({repo: {str(name): key.strip() for name, key in keys.items()}
                       for repo, keys in repos.items()}, sort_keys=True)


def digests(repos: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """{repository: digest}: what `keystone-node install-keys` and `key-digest` print for a
    node holding `repos` (the stack compares them after every push)."""
    return {repo: digest(keys) for repo, keys in sorted(repos.items())}


# -- a repository imported from an existing Keystone (moving it in) ----------------------
def imported_repository(imported: Mapping[str, str], new_keys: list[str], rotations: int,
                        max_active: int) -> dict[str, str]:
    """The repository after `rotations` rotations of an imported one, as Keystone's own
    fernet_rotate would make them: the staged key "0" becomes the next-numbered primary,
    new_keys[i] is the key staged by rotation i+1, and the oldest keys beyond max_active go.
    With no rotation it is the imported repository exactly: its primary stays primary."""
    if rotations < 0:
        raise ValueError("rotations must be 0 or more")
    if len(new_keys) < rotations:
        raise ValueError(f"{rotations} rotations of imported keys need {rotations} new keys, got {len(new_keys)}")
    if max_active < 3:
        raise ValueError("max_active must be at least 3 (staged, primary, and the previous primary)")
    repo = {str(k): v for k, v in imported.items()}
    top = max(int(n) for n in repo)
    for i in range(rotations):
        repo[str(top + i + 1)] = repo["0"]
        repo["0"] = new_keys[i]
        for n in sorted((int(n) for n in repo if n != "0"), reverse=True)[max_active - 1:]:
            del repo[str(n)]
    return repo
