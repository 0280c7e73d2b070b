#!/usr/bin/env python
"""Generate a synthetic DAVIS-2017-style video set with masks and ground-truth flow."""
import sys
from densessl.tools.make_synthetic_davis import main
if __name__ == "__main__":
    sys.exit(main())
