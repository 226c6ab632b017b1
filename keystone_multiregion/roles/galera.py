"""The Galera layer (data nodes and the arbitrator): configuration, TLS, galera-node."""

from __future__ import annotations

import ipaddress
import json

from ..security import PORTS
from ..topology import ARBITRATOR, REPLICA, Node, Topology
from . import backup
from .base import File, RoleLayer

# The data volume is known by its file system label (galera-node DATA_LABEL checks that the
# file system mounted on the data directory is the one with this label before it starts).
GALERA_DATA_LABEL = "galera-data"
GALERA_DATADIR = "/var/lib/mysql"
# The health server's system user and database account (galera-node HEALTH_USER).
HEALTH_USER = "galera-health"
# Debian's prometheus-mysqld-exporter reads its settings here (its unit's EnvironmentFile).
MYSQLD_EXPORTER_DEFAULTS = "/etc/default/prometheus-mysqld-exporter"
TLS_DIR = "/etc/mysql/ssl"
TLS_PATHS = {"ca": f"{TLS_DIR}/ca.pem", "cert": f"{TLS_DIR}/node-cert.pem", "key": f"{TLS_DIR}/node-key.pem"}
GALERA_CONF = "/etc/mysql/mariadb.conf.d/99-keystone-multiregion.cnf"
GALERA_SST_CONF = "/etc/mysql/mariadb.conf.d/99-keystone-multiregion-sst.cnf"
GALERA_NODE_TOOL = "/usr/local/sbin/galera-node"
# galera-node's backup code, a module it imports from here (agents/galera_backup.py).
BACKUP_MODULE = "/usr/local/lib/keystone-multiregion/galera_backup.py"
# The health server both database agents run (galera-node, replica-node), a module they
# import from the same directory (agents/node_health.py).
NODE_HEALTH_MODULE = "/usr/local/lib/keystone-multiregion/node_health.py"
# wsrep_gtid_domain_id: the same on every node (the cluster's write-sets keep one GTID).
WSREP_GTID_DOMAIN = 1
# garbd's own system user (Debian's garb.service says User=nobody, whom other daemons share):
# the only user that reads the arbitrator's TLS key. The drop-in sets it.
GARBD_USER = "garbd"
GARB_DROPIN = "/etc/systemd/system/garb.service.d/keystone-multiregion.conf"
# Database users the node that starts the cluster creates (root only reads it).
DB_USERS = "/etc/mysql/keystone-multiregion-users.json"
SST_USER = "sst"
# Stop Debian's postinst from starting MariaDB with a half-written configuration: the
# node's own start (galera-node start) decides between joining and a new cluster.
DENY_SERVICE_START = ["cloud-init-per", "once", "ksm-deny-service-start", "sh", "-c",
                      "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d"]


def provider_options(topo: Topology, node: Node) -> list[str]:
    """wsrep_provider_options (and garbd's options): WAN timeouts, segment, gcache, TLS."""
    g = topo.galera
    options = [
        f"gmcast.segment={topo.region(node.region).index}",
        f"evs.keepalive_period={g.evs_keepalive_period}",
        f"evs.suspect_timeout={g.evs_suspect_timeout}",
        f"evs.inactive_timeout={g.evs_inactive_timeout}",
        f"evs.install_timeout={g.evs_install_timeout}",
        f"evs.send_window={g.evs_send_window}",
        f"evs.user_send_window={g.evs_user_send_window}",
        # After all nodes stopped at once, restore the Primary component from the saved view.
        "pc.recovery=TRUE",
    ]
    if node.role == "galera":
        options.append(f"gcache.size={g.gcache_mb}M")
        # The node's vote. node-agent changes it live (SET GLOBAL), one node at a time.
        options.append(f"pc.weight={node.weight}")
    options += [f"socket.ssl_key={TLS_PATHS['key']}", f"socket.ssl_cert={TLS_PATHS['cert']}",
                f"socket.ssl_ca={TLS_PATHS['ca']}"]
    return options


def _context(topo: Topology, node: Node, needed: dict) -> dict:
    peers = [n.address for n in topo.nodes(role="galera")]
    return {
        "galera": topo.galera,
        "health_port": PORTS["galera_health"],
        "health_user": HEALTH_USER,
        "exporter_port": PORTS["mysqld_exporter"],
        "datadir": GALERA_DATADIR,
        "sst_user": SST_USER,
        "garbd_user": GARBD_USER,
        "peers": peers if node.role == "galera" else [f"{a}:{PORTS['galera_replication']}" for a in peers],
        "provider_options": provider_options(topo, node),
        "tls_key_path": TLS_PATHS["key"], "tls_cert_path": TLS_PATHS["cert"], "tls_ca_path": TLS_PATHS["ca"],
        # Binary logs and GTIDs (galera.cnf): one GTID domain for the cluster's write-sets, one
        # per node for anything written outside replication.
        "binlog_expire_s": backup.binlog_expire_s(topo),
        "wsrep_gtid_domain_id": WSREP_GTID_DOMAIN,
        "gtid_domain_id": 1000 * topo.region(node.region).index + node.number,
        "backup_interval_h": topo.backup.incremental_interval_h if topo.backup else 1,
    }


def _galera_files(topo: Topology, node: Node, needed: dict) -> list[File]:
    return _tls_files(topo, node, needed) + backup.files(topo, node, needed)


def _tls_files(topo: Topology, node: Node, needed: dict) -> list[File]:
    files = [File(TLS_PATHS["ca"], needed["ca_cert"]), File(TLS_PATHS["cert"], needed["tls_cert"]),
             File(TLS_PATHS["key"], needed["tls_key"], permissions="0600")]
    if node.role == "galera":
        # Keystone's database and user; the user may connect from the regions' networks
        # (through the internal proxies; the security groups admit only those).
        users = {"databases": ["keystone"],
                 "users": [{"name": "keystone", "password": needed["keystone_db_password"], "database": "keystone",
                            "hosts": [_mysql_host_pattern(r.cidr) for r in topo.regions if r.core],
                            "require_ssl": True}],
                 # bootstrap-here asks each peer's server whether it runs a Primary component
                 # (3306 is open between Galera nodes) with this account, over verified TLS.
                 "status_user": "keystone", "ssl_ca": TLS_PATHS["ca"],
                 # The replica regions' replicas (agents/replica-node.py): one account, from
                 # each replica's address only, REQUIRE SSL; it streams binary logs and
                 # dumps the replicated databases once to seed a replica.
                 "replication_users": replication_users(topo, needed)}
        files.append(File(DB_USERS, json.dumps(users, indent=2, sort_keys=True) + "\n", permissions="0600"))
    return files


REPLICATION_USER = "replication"
# What a replica needs of the core: the binary log stream, the GTID position, and a
# consistent dump of the replicated databases (mariadb-dump --single-transaction needs no
# RELOAD on MariaDB: no FLUSH TABLES WITH READ LOCK).
REPLICATION_GLOBAL_PRIVILEGES = ("REPLICATION SLAVE", "BINLOG MONITOR")
REPLICATION_DATABASE_PRIVILEGES = ("SELECT", "SHOW VIEW", "TRIGGER", "LOCK TABLES")
REPLICATED_DATABASES = ("keystone",)


def replication_users(topo: Topology, needed: dict) -> list[dict]:
    """The replication account for DB_USERS (galera-node init-cluster creates it), or [] when
    the topology has no replica region."""
    replicas = topo.nodes(role=REPLICA)
    if not replicas:
        return []
    return [{"name": REPLICATION_USER, "password": needed["galera_replication_password"],
             "hosts": [n.address for n in replicas], "require_ssl": True,
             "global_privileges": list(REPLICATION_GLOBAL_PRIVILEGES),
             "databases": {db: list(REPLICATION_DATABASE_PRIVILEGES) for db in REPLICATED_DATABASES}}]


def _mysql_host_pattern(cidr: str) -> str:
    """MySQL's host form of a network: 10.10.1.0/255.255.255.0."""
    net = ipaddress.ip_network(cidr)
    return f"{net.network_address}/{net.netmask}"


def _galera_cloud_config(topo: Topology, node: Node, doc: dict) -> None:
    doc["bootcmd"] = [DENY_SERVICE_START]
    doc["runcmd"] = [
        ["rm", "-f", "/usr/sbin/policy-rc.d"],
        # The units and drop-ins written by cloud-init (mariadb waits for its data volume).
        ["systemctl", "daemon-reload"],
        ["python3", GALERA_NODE_TOOL, "prepare"],
        ["python3", GALERA_NODE_TOOL, "start"],
        ["systemctl", "enable", "--now", "galera-health.service"],
        ["systemctl", "enable", "--now", "prometheus-mysqld-exporter.service"],
        ["systemctl", "enable", "--now", "keystone-multiregion-backup.timer"],
    ]
    # The data volume is attached at boot (a block device of the instance). Make a file
    # system only if it has none (overwrite: false keeps existing data), and mount it by
    # label before the packages install into it. `nofail` keeps the VM reachable over SSH
    # when the volume is missing; MariaDB then does not start (RequiresMountsFor in its
    # drop-in, and galera-node refuses unless the labelled file system is mounted).
    doc["fs_setup"] = [{"label": GALERA_DATA_LABEL, "filesystem": "ext4",
                        "device": topo.galera_data_device, "partition": "none", "overwrite": False}]
    doc["mounts"] = [[f"LABEL={GALERA_DATA_LABEL}", GALERA_DATADIR, "ext4",
                      "defaults,nofail,x-systemd.device-timeout=60s", "0", "2"]]


def _arbitrator_cloud_config(topo: Topology, node: Node, doc: dict) -> None:
    # write_files runs before users exist: the key arrives root:root 0600, then becomes
    # readable by garbd's own group (garbd alone is in it). The package's first start of
    # garb.service fails (no such user yet); this one runs it as garbd.
    doc["runcmd"] = [
        ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", GARBD_USER],
        ["chown", f"root:{GARBD_USER}", TLS_PATHS["key"]], ["chmod", "0640", TLS_PATHS["key"]],
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "garb.service"],
    ]


GALERA = RoleLayer(
    packages=("mariadb-server", "mariadb-backup", "galera-4", "socat", "prometheus-mysqld-exporter",
              "python3-swiftclient"),
    files=(
        ("galera/galera.cnf.j2", GALERA_CONF, "0644"),
        ("galera/sst-auth.cnf.j2", GALERA_SST_CONF, "0600"),  # galera-node prepare: 0640 root:mysql
        ("galera/root-my.cnf.j2", "/root/.my.cnf", "0600"),
        ("agents/galera-node.py", GALERA_NODE_TOOL, "0755"),
        ("agents/galera_backup.py", BACKUP_MODULE, "0644"),
        ("agents/node_health.py", NODE_HEALTH_MODULE, "0644"),
        ("galera/galera-health.service.j2", "/etc/systemd/system/galera-health.service", "0644"),
        ("galera/mariadb-data-volume.conf.j2", "/etc/systemd/system/mariadb.service.d/keystone-multiregion.conf",
         "0644"),
        ("galera/mysqld-exporter.j2", MYSQLD_EXPORTER_DEFAULTS, "0644"),
        ("galera/keystone-multiregion-backup.service", backup.BACKUP_SERVICE, "0644"),
        ("galera/keystone-multiregion-backup.timer.j2", backup.BACKUP_TIMER, "0644"),
    ),
    context=_context, secret_files=_galera_files, cloud_config=_galera_cloud_config,
    on_change={GALERA_CONF: "galera:settings", GALERA_SST_CONF: "galera:restart",
               **{path: "galera:restart" for path in TLS_PATHS.values()}, DB_USERS: "galera:users",
               "/etc/systemd/system/galera-health.service": "systemd:daemon-reload",
               "/etc/systemd/system/mariadb.service.d/keystone-multiregion.conf": "systemd:daemon-reload",
               MYSQLD_EXPORTER_DEFAULTS: "exporter:restart",
               backup.BACKUP_SERVICE: "systemd:daemon-reload", backup.BACKUP_TIMER: "systemd:daemon-reload"})

ARBITRATOR_LAYER = RoleLayer(
    packages=("galera-arbitrator-4",),
    files=(("galera/garbd.j2", "/etc/default/garb", "0644"),
           ("galera/garb-service.conf.j2", GARB_DROPIN, "0644")),
    context=_context, secret_files=_tls_files, cloud_config=_arbitrator_cloud_config,
    on_change={"/etc/default/garb": "garbd:restart", GARB_DROPIN: "garbd:restart",
               **{path: "garbd:restart" for path in TLS_PATHS.values()}})

LAYERS = {"galera": GALERA, ARBITRATOR: ARBITRATOR_LAYER}
