"""One module per layer; LAYERS maps every role to what the renderer needs of it."""

from . import galera, keystone, memcached, proxy, replica
from .base import File, RoleLayer

LAYERS: dict[str, RoleLayer] = {**galera.LAYERS, **keystone.LAYERS, **memcached.LAYERS, **proxy.LAYERS,
                               **replica.LAYERS}

__all__ = ["LAYERS", "File", "RoleLayer"]
