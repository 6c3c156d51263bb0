"""Fill the depth HDF5 cache for a config: python tools/precompute_depth.py CONFIG.yaml [key=value ...] (see --help)."""

import sys

from mvcoding.precompute import main_depth

if __name__ == "__main__":
    sys.exit(main_depth())
