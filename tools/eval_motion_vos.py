#!/usr/bin/env python
"""Predict and score motion segmentation masks (see densessl.tools.eval_motion_vos)."""
import sys

from densessl.tools.eval_motion_vos import main

if __name__ == "__main__":
    sys.exit(main())
