"""A change of topology on a running deployment, step by step: the order and its check.

Region stacks change one after the other, and inside a stack the Galera members change one
after the other (components/nodes.py). So a change that adds or removes Galera members,
or changes their votes (roles.galera.weight), passes through intermediate clusters, one
per member. Each of them must be safe on its own: an odd number of votes, and no region
holding half of them or more (topology.quorum_problem, the rule for a whole topology).

The order, and why:

1. Regions leaving the topology first, each with `pulumi destroy` on its stack: its Galera
   members leave the cluster cleanly, one after the other (node-agent leave), before their
   VMs go. The other regions still hold its peers, grants and rules: harmless until step 2.
2. The regions that stay, with `pulumi up`, in topology order: every node gets the new
   peers, backends, grants and security-group rules by push; Galera members of the region
   change their vote, join (a higher count) or leave (a lower count, the highest first).
   The regions being added do not exist yet: a push waits for no member that does not
   (node-agent settle_size), and a Galera restart is refused until they have joined.
3. Regions joining, with `pulumi up`, in topology order: their security groups admit them
   (step 2 opened the others'), and their Galera members join by SST, one after the other.

A member that joins counts with its vote at once. So two members of weight 1 can never be
added one after the other without passing through an even number of votes: a region added
to a three-vote cluster comes with one Galera node of weight 2 (or with an arbitrator
elsewhere in the same change, and so on); `plan` says which step breaks and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .topology import Node, Topology, TopologyError, quorum_problem


@dataclass(frozen=True)
class Step:
    """One stack operation and the Galera clusters it passes through."""

    stack: str            # the region stack (its name is the region's)
    operation: str        # "pulumi up" or "pulumi destroy"
    why: str              # what it does, in a line
    members: tuple[str, ...] = ()  # the Galera members it changes, in order
    clusters: tuple[dict[str, tuple[str, int]], ...] = field(default=(), repr=False)  # after each member

    @property
    def votes(self) -> list[int]:
        return [sum(w for _, w in c.values()) for c in self.clusters]


def _members(topo: Topology) -> dict[str, Node]:
    return {n.name: n for n in topo.galera_members}


def _fixed(old: Topology, new: Topology) -> None:
    """What a running deployment cannot change in place."""
    if old.name != new.name:
        raise TopologyError("name", f"{old.name!r} became {new.name!r}: the name is the Galera cluster's name "
                            "and every resource's prefix", f"keep name: {old.name}")
    for i, r in enumerate(new.regions):
        for before in old.regions:
            if before.name != r.name:
                continue
            for attr in ("index", "cidr"):
                if getattr(before, attr) != getattr(r, attr):
                    raise TopologyError(f"regions[{i}].{attr}",
                                        f"{r.name}'s {attr} changed from {getattr(before, attr)} to "
                                        f"{getattr(r, attr)}: every address and Galera segment of a running "
                                        "region comes from it",
                                        f"keep {attr}: {getattr(before, attr)}; to move a region, add a new one "
                                        "and remove the old one, as two changes")


def plan(old: Topology, new: Topology) -> list[Step]:
    """The steps from the deployment of `old` to that of `new`, each member change checked.
    Raises TopologyError naming the first step that would leave an unsafe cluster."""
    _fixed(old, new)
    before, after = _members(old), _members(new)
    old_regions = [r.name for r in old.regions]
    new_regions = [r.name for r in new.regions]
    cluster = {name: (n.region, n.weight) for name, n in before.items()}
    steps: list[Step] = []

    def walk(stack: str, operation: str, why: str, changes: list[tuple[str, tuple[str, int] | None]]) -> None:
        clusters = []
        for name, member in changes:
            if member is None:
                cluster.pop(name, None)
            else:
                cluster[name] = member
            clusters.append(dict(cluster))
            _check_step(len(steps) + 1, stack, operation, name, member, clusters[-1])
        steps.append(Step(stack, operation, why, tuple(n for n, _ in changes), tuple(clusters)))

    def ordered(names):
        return sorted(names, key=lambda n: (before.get(n) or after[n]).number)

    # 1. Regions leaving: their members leave, the last one first.
    for region in reversed([r for r in old_regions if r not in new_regions]):
        names = list(reversed(ordered([n for n, m in before.items() if m.region == region])))
        walk(region, "pulumi destroy", f"{region} leaves: its Galera members leave the cluster, then its VMs go"
             if names else f"{region} leaves: its VMs go (no Galera member)", [(n, None) for n in names])
    # 2. Regions staying: votes changed and members added in node order, then members removed.
    for region in [r for r in new_regions if r in old_regions]:
        kept = [n for n, m in after.items() if m.region == region]
        changes: list[tuple[str, tuple[str, int] | None]] = [
            (n, (region, after[n].weight)) for n in ordered(kept)
            if n not in before or before[n].weight != after[n].weight]
        gone = [n for n, m in before.items() if m.region == region and n not in after]
        changes += [(n, None) for n in reversed(ordered(gone))]
        why = f"{region}: every node gets the new peers, backends, grants and rules by push"
        if changes:
            why += "; its Galera members change one after the other"
        walk(region, "pulumi up", why, changes)
    # 3. Regions joining: their members join, one after the other.
    for region in [r for r in new_regions if r not in old_regions]:
        names = ordered([n for n, m in after.items() if m.region == region])
        walk(region, "pulumi up", f"{region} joins: its nodes are created, its Galera members join by SST"
             if names else f"{region} joins: its nodes are created (no Galera member: a replica region's "
             "replicas are seeded from the core)", [(n, (region, after[n].weight)) for n in names])
    return steps


def _check_step(number: int, stack: str, operation: str, name: str, member, cluster) -> None:
    problem = quorum_problem(cluster)
    if problem is None:
        return
    kind, region, held, votes = problem
    doing = f"{name} leaving" if member is None else f"{name} joining or changing its vote to {member[1]}"
    if kind == "even":
        what = f"{votes} votes, an even number: a split into two halves would leave no Primary component"
        if votes == 0:
            what = "no Galera member at all"
    else:
        what = f"region {region} holding {held} of {votes} votes: losing it would leave the others without quorum"
    raise TopologyError(
        f"step {number} ({operation} {stack})", f"after {doing} the cluster would have {what}",
        "change the votes in steps that stay odd: add or remove a region's Galera nodes as one node of "
        "weight 2 (roles.galera.weight: 2), or add or remove an arbitrator in the same change; split "
        "a larger change into several (`python -m keystone_multiregion plan` checks each)")


def describe(steps: list[Step], stack_of: dict[str, str] | None = None) -> list[str]:
    """The plan as numbered lines, with the votes after each member's change. `stack_of`
    maps a region to its stack's name (default: the region's name)."""
    lines = []
    for i, s in enumerate(steps, 1):
        lines.append(f"{i}. {s.operation} on stack {(stack_of or {}).get(s.stack, s.stack)}: {s.why}")
        for name, cluster in zip(s.members, s.clusters):
            votes = sum(w for _, w in cluster.values())
            by_region: dict[str, int] = {}
            for region, w in cluster.values():
                by_region[region] = by_region.get(region, 0) + w
            lines.append(f"   {name}: {votes} votes after it "
                         f"({', '.join(f'{r} {v}' for r, v in by_region.items())})")
    return lines
