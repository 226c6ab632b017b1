"""Two regions and a witness site: garbd, started from its rendered /etc/default/garb, is the
third vote; the region that keeps the arbitrator's vote stays Primary when the other is cut."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def witness_lab(lab_tools, tmp_path_factory):
    from keystone_multiregion.topology import load_topology_file
    from lab import session
    from lab.deployment import LabDeployment
    from lab.testing import assert_clean, recorded

    prefix = os.environ.get("KSL_WITNESS_PREFIX", "kslw-")
    labdir = str(tmp_path_factory.mktemp("ksl-witness"))
    topology = os.path.join(os.path.dirname(__file__), "..", "..", "lab", "topology-witness.yaml")
    with session(labdir, prefix, purge=True) as lab:
        dep = LabDeployment(lab, load_topology_file(topology))
        dep.up(only=("galera", "arbitrator"))
        yield dep
        inodes, pids = recorded(lab)
    assert_clean(prefix, labdir, inodes, pids)


def test_garbd_joins_as_the_third_voter(witness_lab):
    dep = witness_lab
    for node in dep.topo.nodes(role="galera"):
        status = dep.galera_status(node.name)
        assert status.get("healthy") and status.get("wsrep_cluster_size") == "3", status
    assert dep.lab.procs.is_alive("arbitrator-witness-1", "garbd")


def test_cutting_one_region_leaves_the_other_primary_with_the_arbitrator(witness_lab):
    from lab.drills import GaleraDrills
    drills = GaleraDrills(witness_lab)
    result = drills.drill_partition(region="lab-b")
    print(result.line())
    assert result.ok, result.line()
    heal = drills.drill_heal()
    print(heal.line())
    assert heal.ok, heal.line()
