"""``python -m textcl RECIPE`` is an alias of ``python -m textcl.train RECIPE``."""

import sys

from textcl.train import main

sys.exit(main())
