#!/usr/bin/env python
"""Compute and cache DIS optical flow for DAVIS-style videos (see densessl.tools.compute_flow)."""
import sys

from densessl.tools.compute_flow import main

if __name__ == "__main__":
    sys.exit(main())
