"""``python -m esmm`` is the same as the ``esmm`` command."""

import sys

from esmm.cli import main

sys.exit(main())
