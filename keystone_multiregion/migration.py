"""Moving an existing Keystone in: its Fernet and credential key repositories, checked and
turned into the shared stack's `importedKeys` config (a secret).

    python -m keystone_multiregion import-keys --fernet DIR --credential DIR --out FILE [--stack shared]

Keystone reads every file of a key directory whose name int() accepts: "0" is the staged
key, the highest number the primary (it signs), the others validate only. Each key is
URL-safe base64 of 32 bytes (a Fernet key: 16 signing + 16 encryption). The shared stack
exports the imported repositories exactly as given; `fernetRotations` / `credentialRotations`
then rotate on from them (keys.imported_repository): the imported primary stays primary
until the next rotation, as Keystone's own fernet_rotate would have it.

The rotation counters already in Pulumi.<stack>.yaml at the import are recorded with the
keys (`fernet_rotations`, `credential_rotations`): rotations counted beyond them continue
from the imported repositories, with staged keys taken from the stack's generated sequence
past the keys the deployment has used.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from pathlib import Path
from typing import Mapping

from .keys import digest, primary
from .secrets import KEY_REPOSITORIES

IMPORTED_KEYS_CONFIG = "importedKeys"
OPTION = {"fernet_keys": "--fernet", "credential_keys": "--credential"}
SETTING = {"fernet_keys": "fernetRotations", "credential_keys": "credentialRotations"}
ROTATIONS = {"fernet_keys": "fernet_rotations", "credential_keys": "credential_rotations"}
KEY_NAME = re.compile(r"0|[1-9][0-9]*")
FERNET_KEY = re.compile(r"[A-Za-z0-9_-]{43}=")


class KeyImportError(ValueError):
    """One line: the option or file at fault, what is wrong, and what to do."""


def _int_name(name: str) -> int | None:
    try:
        return int(name)
    except ValueError:
        return None


def key_problem(key: str) -> str | None:
    """Why `key` is not a Fernet key (URL-safe base64 of 32 bytes), or None."""
    if not FERNET_KEY.fullmatch(key):
        return "not a Fernet key (44 characters of URL-safe base64 of 32 bytes)"
    try:
        if len(base64.urlsafe_b64decode(key)) != 32:
            return "not a Fernet key (it decodes to other than 32 bytes)"
    except (binascii.Error, ValueError):
        return "not a Fernet key (not URL-safe base64)"
    return None


def check_repository(where: str, files: Mapping[str, str]) -> dict[str, str]:
    """The repository {file name: key} as Keystone would load it, or KeyImportError naming
    `where` (the option and directory, or the config key)."""
    repo = {}
    for name, key in files.items():
        if _int_name(name) is None:
            continue  # Keystone skips it too
        if not KEY_NAME.fullmatch(name):
            raise KeyImportError(f"{where}: file {name!r} is a key number to Keystone but not a plain one (ASCII "
                               "digits, no leading zero or blanks); rename it as the source's keystone-manage "
                               "would have named it")
        key = key.strip()
        problem = key_problem(key)
        if problem:
            raise KeyImportError(f"{where}: file {name} is {problem}; copy the source's key directory as it is "
                               "(keystone-manage fernet_setup / credential_setup wrote it)")
        repo[name] = key
    if "0" not in repo:
        raise KeyImportError(f"{where}: no staged key (file 0); copy the whole key directory of the source "
                           f"({sorted(repo, key=int) or 'no key files found'})")
    if len(repo) < 2:
        raise KeyImportError(f"{where}: only the staged key 0, no primary; copy the whole key directory of the source")
    if len(set(repo.values())) != len(repo):
        raise KeyImportError(f"{where}: the same key appears in two files; copy the source's key directory as it is")
    return repo


def read_key_dir(option: str, path: str | os.PathLike) -> dict[str, str]:
    """The repository in directory `path` (given as `option`), checked."""
    d = Path(path)
    where = f"{option} {d}"
    if not d.is_dir():
        raise KeyImportError(f"{where}: not a directory; give the source's key directory (e.g. /etc/keystone/"
                           f"{'fernet-keys' if option == '--fernet' else 'credential-keys'} copied from it)")
    files = {}
    for entry in sorted(d.iterdir()):
        if _int_name(entry.name) is None:
            continue
        if entry.is_symlink() or not entry.is_file():
            raise KeyImportError(f"{where}: {entry.name} is not a regular file; copy the keys themselves "
                               "(cp -L, or rsync without links)")
        try:
            files[entry.name] = entry.read_text()
        except (UnicodeDecodeError, OSError) as exc:
            raise KeyImportError(f"{where}: {entry.name} cannot be read as a key ({exc})") from None
    return check_repository(where, files)


def imported_value(fernet: Mapping[str, str], credential: Mapping[str, str],
                   rotations: Mapping[str, int] | None = None) -> dict:
    """What the shared stack's importedKeys config holds."""
    shared = set(fernet.values()) & set(credential.values())
    if shared:
        raise KeyImportError("--credential: holds keys of --fernet (the same directory given twice?); give the "
                           "source's credential key directory (/etc/keystone/credential-keys)")
    value = {"fernet_keys": dict(fernet), "credential_keys": dict(credential)}
    for repo in KEY_REPOSITORIES:
        value[ROTATIONS[repo]] = int((rotations or {}).get(repo, 0))
    return value


def check_imported_config(value, is_secret: bool, fernet_rotations: int, credential_rotations: int) -> dict | None:
    """The shared stack's importedKeys config, checked, or None when it is not set. Anything
    wrong raises KeyImportError with one line naming the key and the fix, before any resource."""
    if value is None:
        return None
    key = f"config: keystone-multiregion:{IMPORTED_KEYS_CONFIG}"
    fix = ("run `python -m keystone_multiregion import-keys --fernet DIR --credential DIR --out FILE` and "
           f"`pulumi config set --secret {IMPORTED_KEYS_CONFIG} -s shared < FILE`")
    if not isinstance(value, Mapping):
        raise KeyImportError(f"{key} is not a mapping of fernet_keys and credential_keys; {fix}")
    if not is_secret:
        raise KeyImportError(f"{key} is not a secret (the keys would sit in clear text in Pulumi.shared.yaml); {fix}")
    out = {}
    counters = {"fernet_keys": fernet_rotations, "credential_keys": credential_rotations}
    for repo in KEY_REPOSITORIES:
        files = value.get(repo)
        if not isinstance(files, Mapping):
            raise KeyImportError(f"{key} lacks {repo}; {fix}")
        out[repo] = check_repository(f"{key}.{repo}", {str(k): str(v) for k, v in files.items()})
        base = value.get(ROTATIONS[repo], 0)
        if not isinstance(base, int) or base < 0:
            raise KeyImportError(f"{key}.{ROTATIONS[repo]} is not a count of rotations; {fix}")
        if counters[repo] < base:
            raise KeyImportError(f"config: keystone-multiregion:{SETTING[repo]} is {counters[repo]}, below the "
                               f"{base} recorded when the keys were imported ({IMPORTED_KEYS_CONFIG}."
                               f"{ROTATIONS[repo]}); set it to {base} or more (each one more is a rotation "
                               "from the imported keys)")
        out[ROTATIONS[repo]] = base
    return out


def summary(value: Mapping) -> list[str]:
    """What import-keys prints: no key, only counts, primaries and digests."""
    lines = []
    for repo in KEY_REPOSITORIES:
        files = value[repo]
        top = max(files, key=int)
        lines.append(f"{repo}: {len(files)} keys (files {', '.join(sorted(files, key=int))}; primary {top}, "
                     f"staged 0), digest {digest(files)}")
        assert primary(files) == files[top]
    return lines


def write_secret_file(path: str | os.PathLike, value: Mapping) -> None:
    """The config value as JSON in a new file only its owner can read (never an existing one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(value, fh, sort_keys=True)
        fh.write("\n")
