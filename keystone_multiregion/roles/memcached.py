"""The memcached layer: the source design's cache, on private addresses only."""

from __future__ import annotations

from ..security import PORTS
from .base import RoleLayer

MEMCACHED_MEMORY_MB = 512  # source design: 512 MB of cache per memcached node

MEMCACHED = RoleLayer(
    packages=("memcached",),
    files=(("memcached/memcached.conf.j2", "/etc/memcached.conf", "0644"),),
    context=lambda topo, node, needed: {"memory_mb": MEMCACHED_MEMORY_MB, "port": PORTS["memcached"]},
    on_change={"/etc/memcached.conf": "memcached:restart"})

LAYERS = {"memcached": MEMCACHED}
