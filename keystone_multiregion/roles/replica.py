"""The replica layer: a replica region's database nodes, MariaDB asynchronous replicas of the
core's Galera cluster (agents/replica-node.py starts, seeds, watches and switches them).

A replica is not a Galera member: no provider, no votes, no SST. It replicates the keystone
database by GTID (the cluster's domain only) over verified TLS from one core Galera node, its
source, and falls back to the others in the order the topology gives
(Topology.replica_sources). Keystone in its region reads from it through the region's
internal proxy; read_only refuses any write (the proxies send writes to a core region,
roles/proxy.py)."""

from __future__ import annotations

import json

from ..security import PORTS
from ..topology import REPLICA, Node, Topology
from . import backup
from .base import File, RoleLayer
from .galera import (DENY_SERVICE_START, GALERA_CONF, GALERA_DATA_LABEL, GALERA_DATADIR, MYSQLD_EXPORTER_DEFAULTS,
                     NODE_HEALTH_MODULE, REPLICATED_DATABASES, REPLICATION_USER, TLS_PATHS, WSREP_GTID_DOMAIN,
                     _mysql_host_pattern)

REPLICA_TOOL = "/usr/local/sbin/replica-node"
# Root only: the replication account's password and Keystone's.
REPLICA_CONFIG = "/etc/keystone-multiregion/replica.json"
REPLICA_HEALTH_USER = "replica-health"
HEALTH_SERVICE = "/etc/systemd/system/replica-health.service"
WATCH_SERVICE = "/etc/systemd/system/replica-watch.service"
DATA_VOLUME_DROPIN = "/etc/systemd/system/mariadb.service.d/keystone-multiregion.conf"
# The health check answers 503 beyond this lag: the proxies then prefer the other replica,
# and fall back to any replica (the degraded backend) when neither is within it.
MAX_LAG_S = 60
# A dead source is noticed within slave_net_timeout, and the watch switches after
# SWITCH_AFTER_S without an answer from it.
SLAVE_NET_TIMEOUT_S = 20
SWITCH_AFTER_S = 20


def server_id(topo: Topology, node: Node) -> int:
    """Unique per replica, never the core's 1: 1000 x region index + node number."""
    return 1000 * topo.region(node.region).index + node.number


def replica_config(topo: Topology, node: Node, needed: dict) -> dict:
    proxies = [n.address for n in topo.nodes(node.region, "proxy")]
    return {
        "node": node.name,
        "server_id": server_id(topo, node),
        "sources": [{"name": s.name, "address": s.address, "region": s.region}
                    for s in topo.replica_sources(node)],
        "replication_user": REPLICATION_USER,
        "replication_password": needed["galera_replication_password"],
        "ssl_ca": TLS_PATHS["ca"],
        "databases": list(REPLICATED_DATABASES),
        # Only the cluster's GTID domain: a core node's local domain exists on that node alone.
        "domain_ids": [WSREP_GTID_DOMAIN],
        "max_lag_s": MAX_LAG_S,
        "heartbeat_s": 5, "connect_retry_s": 5,
        # Keystone's account, as on the core, but from this region's network only and with
        # SELECT alone (the server is read_only anyway).
        "users": [{"name": "keystone", "password": needed["keystone_db_password"], "database": "keystone",
                   "hosts": [_mysql_host_pattern(topo.region(node.region).cidr)], "require_ssl": True}],
        "proxies": proxies,
    }


def _context(topo: Topology, node: Node, needed: dict) -> dict:
    return {
        "galera": topo.galera,
        "datadir": GALERA_DATADIR,
        "database": REPLICATED_DATABASES[0],
        "server_id": server_id(topo, node),
        # Anything written on the replica itself gets a domain of its own.
        "gtid_domain_id": 1000 * topo.region(node.region).index + node.number,
        "binlog_expire_s": backup.binlog_expire_s(topo),
        "sources": topo.replica_sources(node),
        "slave_net_timeout_s": SLAVE_NET_TIMEOUT_S,
        "switch_after_s": SWITCH_AFTER_S,
        "max_lag_s": MAX_LAG_S,
        "health_port": PORTS["galera_health"], "health_user": REPLICA_HEALTH_USER,
        "exporter_port": PORTS["mysqld_exporter"],
        "tls_key_path": TLS_PATHS["key"], "tls_cert_path": TLS_PATHS["cert"], "tls_ca_path": TLS_PATHS["ca"],
    }


def _secret_files(topo: Topology, node: Node, needed: dict) -> list[File]:
    return [File(TLS_PATHS["ca"], needed["ca_cert"]), File(TLS_PATHS["cert"], needed["tls_cert"]),
            File(TLS_PATHS["key"], needed["tls_key"], permissions="0600"),
            File(REPLICA_CONFIG, json.dumps(replica_config(topo, node, needed), indent=2, sort_keys=True) + "\n",
                 permissions="0600")]


def _cloud_config(topo: Topology, node: Node, doc: dict) -> None:
    doc["bootcmd"] = [DENY_SERVICE_START]
    doc["runcmd"] = [
        ["rm", "-f", "/usr/sbin/policy-rc.d"],
        ["systemctl", "daemon-reload"],
        ["python3", REPLICA_TOOL, "prepare"],
        ["python3", REPLICA_TOOL, "start"],
        ["systemctl", "enable", "--now", "replica-health.service"],
        ["systemctl", "enable", "--now", "replica-watch.service"],
        ["systemctl", "enable", "--now", "prometheus-mysqld-exporter.service"],
    ]
    # The data volume as on a Galera node (roles/galera.py): made once, mounted by label.
    doc["fs_setup"] = [{"label": GALERA_DATA_LABEL, "filesystem": "ext4",
                        "device": topo.galera_data_device, "partition": "none", "overwrite": False}]
    doc["mounts"] = [[f"LABEL={GALERA_DATA_LABEL}", GALERA_DATADIR, "ext4",
                      "defaults,nofail,x-systemd.device-timeout=60s", "0", "2"]]


REPLICA_LAYER = RoleLayer(
    # No galera-4 and no backups: a replica holds a copy of the core's data, nothing of its own.
    packages=("mariadb-server", "prometheus-mysqld-exporter"),
    files=(
        ("galera/replica.cnf.j2", GALERA_CONF, "0644"),
        ("galera/root-my.cnf.j2", "/root/.my.cnf", "0600"),
        ("agents/replica-node.py", REPLICA_TOOL, "0755"),
        ("agents/node_health.py", NODE_HEALTH_MODULE, "0644"),
        ("galera/replica-health.service.j2", HEALTH_SERVICE, "0644"),
        ("galera/replica-watch.service.j2", WATCH_SERVICE, "0644"),
        ("galera/mariadb-data-volume.conf.j2", DATA_VOLUME_DROPIN, "0644"),
        ("galera/mysqld-exporter.j2", MYSQLD_EXPORTER_DEFAULTS, "0644"),
    ),
    context=_context, secret_files=_secret_files, cloud_config=_cloud_config,
    # A changed replica.cnf or TLS file restarts MariaDB (it recovers its relay log from
    # gtid_slave_pos); a changed replica.json re-applies the local accounts and restarts the
    # units that read it (replica-health, replica-watch), MariaDB kept running. node-agent's
    # replica:restart refuses while no other replica of the region answers its health check,
    # and waits until `replica-node status` says healthy (agents/node-agent.py).
    on_change={HEALTH_SERVICE: "systemd:daemon-reload", WATCH_SERVICE: "systemd:daemon-reload",
               DATA_VOLUME_DROPIN: "systemd:daemon-reload", MYSQLD_EXPORTER_DEFAULTS: "exporter:restart",
               GALERA_CONF: "replica:restart", REPLICA_CONFIG: "replica:restart",
               **{path: "replica:restart" for path in TLS_PATHS.values()}})

LAYERS = {REPLICA: REPLICA_LAYER}
