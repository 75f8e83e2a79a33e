"""``python -m mdd`` is the ``mdd`` command."""

import sys

from .cli import main

sys.exit(main())
