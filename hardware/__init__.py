"""GPU catalog and cluster descriptions for the planner (imports nothing from costmodels or planner)."""

from .catalog import Catalog, load_catalog
from .cluster import Cluster, parse_cluster, parse_pools, rack_share
from .gpu import GPUSpec, HardwareError

__all__ = ["GPUSpec", "HardwareError", "Catalog", "load_catalog", "Cluster", "parse_cluster", "parse_pools", "rack_share"]
