"""``python -m bench [--quick] [--sets ...] [--jobs convert,sql]``: see :mod:`bench.run`."""

import sys

from bench.run import main

sys.exit(main())
