"""``python -m fstransport.cli``: the same as the ``fstransport`` command."""

import sys

from fstransport.cli.main import main

sys.exit(main())
