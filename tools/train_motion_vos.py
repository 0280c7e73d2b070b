#!/usr/bin/env python
"""Train a CIS motion segmentation model (see densessl.tools.train_motion_vos)."""
import sys

from densessl.tools.train_motion_vos import main

if __name__ == "__main__":
    sys.exit(main())
