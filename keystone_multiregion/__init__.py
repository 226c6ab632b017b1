"""keystone-multiregion core: topology model, validation and rendering. Never imports Pulumi."""

from .topology import Node, Region, Topology, TopologyError, Vip, load_topology, load_topology_file

__all__ = ["Node", "Region", "Topology", "TopologyError", "Vip", "load_topology", "load_topology_file"]
