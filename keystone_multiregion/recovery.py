"""Full-outage recovery: which Galera node to start the cluster from.

After every node stopped (a power loss, a cut of every region), no node may start a new
cluster by itself. The operator runs `galera-node recover-report` on every Galera node
(it prints uuid, seqno and safe_to_bootstrap, running `mariadbd --wsrep-recover` when the
seqno was lost in a crash), feeds the reports to `python -m keystone_multiregion
recover-plan`, runs `galera-node bootstrap-here` on the node it names, and then starts
the others normally: they join and catch up by IST or SST.
"""

from __future__ import annotations


class RecoveryError(ValueError):
    pass


def check_reports(reports: list[dict], expected: list[str], accept_missing: bool = False) -> list[str]:
    """Every Galera node of the topology must have reported: a node left out may be the most
    advanced one. Returns the missing nodes (allowed only with accept_missing)."""
    names = [r.get("node") for r in reports]
    unknown = sorted({n for n in names if n not in expected}, key=str)
    if unknown:
        raise RecoveryError(f"reports from nodes that are not Galera nodes of this topology: {', '.join(map(str, unknown))}; "
                            "pass only the reports of this deployment's nodes")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RecoveryError(f"more than one report from {', '.join(twice)}: pass one report per node")
    missing = [n for n in expected if n not in names]
    if missing and not accept_missing:
        raise RecoveryError(f"no report from {', '.join(missing)}: run `galera-node recover-report` there too, or, if "
                            "that node's data is lost for good, repeat with --accept-missing")
    return missing


def most_advanced(reports: list[dict], preferred: str | None = None) -> str:
    """The node with the highest committed seqno of the cluster's history. Ties go to a node
    already marked safe_to_bootstrap, then to `preferred` (the bootstrap node), then by name."""
    usable = [r for r in reports if r.get("seqno") is not None and r["seqno"] >= 0 and r.get("uuid")]
    if not usable:
        raise RecoveryError("no node reported a position (uuid and seqno >= 0): run `galera-node recover-report` "
                            "on every Galera node with MariaDB stopped, and check the nodes' data volumes")
    uuids = {r["uuid"] for r in usable}
    if len(uuids) > 1:
        raise RecoveryError(f"nodes report different cluster histories ({', '.join(sorted(uuids))}): "
                            "recover from the nodes of the cluster you mean to keep only")
    best = max(usable, key=lambda r: (r["seqno"], r.get("safe_to_bootstrap", 0) == 1, r["node"] == preferred,
                                      # reversed order of names: the smallest name wins a full tie
                                      [-ord(c) for c in r["node"]]))
    return best["node"]
