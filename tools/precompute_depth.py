"""Fill the depth HDF5 cache for a config: `mvcoding precompute depth CONFIG.yaml [key=value ...]` under
its old name (see --help): python tools/precompute_depth.py CONFIG.yaml [key=value ...]"""

import sys

from mvcoding.precompute import tool

if __name__ == "__main__":
    sys.exit(tool("depth"))
