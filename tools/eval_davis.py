#!/usr/bin/env python
"""Score DAVIS result PNGs with the official J&F definitions and write the official CSVs."""
import sys
from densessl.tools.eval_davis import main
if __name__ == "__main__":
    sys.exit(main())
