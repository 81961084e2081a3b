"""``python -m hefl``: the same as the ``hefl`` command."""

import sys

from hefl.cli import main

sys.exit(main())
