"""`python -m keras_tether._cli.bench`: measure the backend Keras is using."""

import sys

from keras_tether._cli.bench.runner import main

sys.exit(main())
