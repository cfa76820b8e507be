"""`python -m bertdesk` runs the command line (the desktop app starts
training this way, with the same interpreter)."""

import sys

from bertdesk.cli import main

sys.exit(main())
