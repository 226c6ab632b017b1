import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def topo():
    """The example topology (topology.yaml's content), validated."""
    from helpers import example
    from keystone_multiregion.topology import load_topology
    return load_topology(example())


@pytest.fixture(scope="module")
def secrets(topo):
    """Every secret the example topology needs, generated locally (keys, CAs, certificates)."""
    from keystone_multiregion import pki
    return pki.generate_secrets(topo)


def pytest_configure(config):
    config.addinivalue_line("markers", "lab: runs real daemons in network namespaces (needs root; slow)")
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist runs a group's tests on one worker")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group marker
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`./run test`: two workers), every lab test in one group: one worker
    runs them all, in file order (they share the session's lab, and two labs at once would
    collide), while the other runs the fast tests."""
    for item in items:
        if item.get_closest_marker("lab"):
            item.add_marker(pytest.mark.xdist_group("lab"))
