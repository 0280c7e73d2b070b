#!/usr/bin/env python
"""Train a contrastive random walk (CRW) model on unlabelled video."""
import sys
from densessl.tools.train_crw import main
if __name__ == "__main__":
    sys.exit(main())
