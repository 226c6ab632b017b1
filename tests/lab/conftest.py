"""Fixtures for the lab infrastructure tests (root only; they build network namespaces).

The tests use their own name prefixes ("kslt-", "kslx-", "ksly-", "kslz-") so they never
touch a developer's running lab ("ksl-"), and temporary lab directories.
"""
from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

TEST_PREFIX = "kslt-"


def pytest_configure(config):
    config.addinivalue_line("markers", "lab: needs root; builds network namespaces "
                                       "(local lab infrastructure)")


@pytest.fixture(scope="session")
def lab_tools():
    """Root check + the Debian/PyPI packages the lab needs (installs only what is missing)."""
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces)")
    from lab import packages
    return packages.ensure_lab_base(prefix=TEST_PREFIX)


@pytest.fixture(scope="module")
def lab3(lab_tools, tmp_path_factory):
    """A 3-region x 1-host lab (prefix kslt-: a1 10.0.1.10, b1 10.0.2.10, c1 10.0.3.10),
    torn down after the module, also on failure or Ctrl-C; the teardown itself is checked
    (no namespace, interface, mount or process may be left)."""
    from lab import HostSpec, session
    from lab.testing import DEMO_CIDRS, DEMO_HOSTS, assert_clean, recorded
    labdir = str(tmp_path_factory.mktemp("ksl-lab"))
    pids: list = []
    inodes: set = set()
    with session(labdir, TEST_PREFIX, purge=True) as lab:
        lab.net.build([HostSpec(*h) for h in DEMO_HOSTS], DEMO_CIDRS)
        lab.started_pids = pids  # tests append the pids they start
        yield lab
        # namespaces (tests may have added hosts) and processes still recorded
        more_inodes, more_pids = recorded(lab)
        inodes |= more_inodes
        pids += more_pids
        created = lab.state.read()["created_paths"]
    assert_clean(TEST_PREFIX, labdir, inodes, pids)
    assert not [p for p in created if os.path.exists(p)], "mountpoints left on the machine"


# Two developers (or a developer and a helper) can run lab tests side by side with their own prefix.
DEPLOY_PREFIX = os.environ.get("KSL_DEPLOY_PREFIX", "ksld-")


@pytest.fixture(scope="session")
def deployment(lab_tools, tmp_path_factory):
    """The lab topology brought up once for the session (Galera, memcached, security
    groups), torn down at the end; the teardown itself is checked."""
    from keystone_multiregion.topology import load_topology_file
    from lab import session
    from lab.deployment import LAB_TOPOLOGY, LabDeployment
    from lab.testing import assert_clean, recorded

    labdir = str(tmp_path_factory.mktemp("ksl-deploy"))
    with session(labdir, DEPLOY_PREFIX, purge=True) as lab:
        dep = LabDeployment(lab, load_topology_file(LAB_TOPOLOGY))
        dep.up()
        yield dep
        inodes, pids = recorded(lab)
        created = lab.state.read()["created_paths"]
    assert_clean(DEPLOY_PREFIX, labdir, inodes, pids)
    assert not [p for p in created if os.path.exists(p)], "mountpoints left on the machine"
