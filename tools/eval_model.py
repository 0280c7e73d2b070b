#!/usr/bin/env python
"""Propagate with a backbone and score with the official DAVIS J&F (see densessl.tools.eval_model)."""
import sys

from densessl.tools.eval_model import main

if __name__ == "__main__":
    sys.exit(main())
