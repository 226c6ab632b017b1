"""What every node runs whatever its role: Debian's prometheus-node-exporter, and the timer
that writes the node's own metrics for it (`node-agent metrics`, agents/node-agent.py).

node_exporter answers on the node's address, port PORTS["node_exporter"], from
`monitoring.cidr` only (security.py); its textfile collector serves METRICS_DIR, where
node-agent writes: files drifted from the last push, certificate expiry, and by role the
VIPs a proxy holds, memcached answering, Keystone healthy and its keys as pushed. The alert
rules on them are in keystone_multiregion/monitoring.py.
"""

from __future__ import annotations

from ..security import PORTS
from ..topology import Node, Topology
from .base import RoleLayer

NODE_EXPORTER_DEFAULTS = "/etc/default/prometheus-node-exporter"
# Debian's node_exporter reads *.prom files here (its textfile collector's default too).
METRICS_DIR = "/var/lib/prometheus/node-exporter"
METRICS_SERVICE = "/etc/systemd/system/keystone-multiregion-metrics.service"
METRICS_TIMER = "/etc/systemd/system/keystone-multiregion-metrics.timer"


def _context(topo: Topology, node: Node, needed: dict) -> dict:
    return {"port": PORTS["node_exporter"], "metrics_dir": METRICS_DIR, "monitoring": topo.monitoring}


def _cloud_config(topo: Topology, node: Node, doc: dict) -> None:
    # After the role's own steps: node_exporter on our ARGS (the package started it on its
    # defaults), and the metrics timer.
    doc.setdefault("runcmd", []).extend([
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "prometheus-node-exporter.service", "keystone-multiregion-metrics.timer"],
        ["systemctl", "restart", "prometheus-node-exporter.service"],
        ["systemctl", "start", "keystone-multiregion-metrics.timer"],
    ])


NODE = RoleLayer(
    packages=("prometheus-node-exporter",),
    files=(
        ("node/prometheus-node-exporter.j2", NODE_EXPORTER_DEFAULTS, "0644"),
        ("node/keystone-multiregion-metrics.service", METRICS_SERVICE, "0644"),
        ("node/keystone-multiregion-metrics.timer.j2", METRICS_TIMER, "0644"),
    ),
    context=_context, cloud_config=_cloud_config,
    on_change={NODE_EXPORTER_DEFAULTS: "node-exporter:restart", METRICS_SERVICE: "systemd:daemon-reload",
               METRICS_TIMER: "systemd:daemon-reload"})
