#!/usr/bin/env python
"""Pre-build the compiled ops and print their cache folder (see densessl.tools.build_ops)."""
import sys

from densessl.tools.build_ops import main

if __name__ == "__main__":
    sys.exit(main())
