"""`python -m keras_tether._cli`: the `keras-tether` command line."""

import sys

from keras_tether._cli import main

sys.exit(main())
