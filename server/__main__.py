"""`python -m server` is the `vteller` command (used to start worker processes)."""

import sys

from server.cli import main

sys.exit(main())
