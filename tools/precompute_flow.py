"""Fill the flow HDF5 cache for a config: `mvcoding precompute flow CONFIG.yaml [key=value ...]` under
its old name (see --help): python tools/precompute_flow.py CONFIG.yaml [key=value ...]"""

import sys

from mvcoding.precompute import tool

if __name__ == "__main__":
    sys.exit(tool("flow"))
