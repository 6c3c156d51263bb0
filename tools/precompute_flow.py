"""Fill the flow HDF5 cache for a config: python tools/precompute_flow.py CONFIG.yaml [key=value ...] (see --help)."""

import sys

from mvcoding.precompute import main_flow

if __name__ == "__main__":
    sys.exit(main_flow())
