"""``python -m instahide_client.cli``: the ``instahide`` command."""

import sys

from instahide_client.cli import main

sys.exit(main())
