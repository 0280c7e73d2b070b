#!/usr/bin/env python
"""Propagate first-frame masks with a backbone (see densessl.tools.propagate)."""
import sys

from densessl.tools.propagate import main

if __name__ == "__main__":
    sys.exit(main())
