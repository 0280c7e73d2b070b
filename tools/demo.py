#!/usr/bin/env python
"""The end-to-end demo on synthetic data (see densessl.tools.demo)."""
import sys

from densessl.tools.demo import main

if __name__ == "__main__":
    sys.exit(main())
