#!/usr/bin/env python
"""Plot the logged curves of several training runs on shared panels (see densessl.tools.compare_runs)."""
import sys

from densessl.tools.compare_runs import main

if __name__ == "__main__":
    sys.exit(main())
