"""One module per layer of the lab deployment, each with the same hooks:

    ROLES      the roles it runs
    PACKAGES   Debian packages its daemons need
    install(dep, rendered)   after the node's files are bound and its firewall loaded
    start(dep, nodes, log)   start the layer's daemons (nodes: this layer's, topology order)
    checks(dep) -> [Check]   measured facts, each able to fail

The deployment calls the layers in ORDER: the database first, Keystone last.
"""

from . import galera, keystone, memcached, proxy, replica

# Keystone reaches its database through the proxies' internal VIP: proxies before Keystone.
# A replica region's replicas seed from the core's Galera nodes: after them.
ORDER = (galera, replica, memcached, proxy, keystone)
