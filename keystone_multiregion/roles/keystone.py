"""The Keystone layer: API nodes served by uwsgi, Fernet tokens, cache on memcached."""

from __future__ import annotations

from .base import RoleLayer

KEYSTONE = RoleLayer(packages=("keystone", "uwsgi-plugin-python3", "python3-memcache"))

LAYERS = {"keystone": KEYSTONE}
