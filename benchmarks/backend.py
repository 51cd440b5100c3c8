"""`python -m benchmarks.backend`: measure the backend Keras is using."""

import sys

from benchmarks.runner import main

if __name__ == "__main__":
    sys.exit(main())
