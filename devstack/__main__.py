"""`python3 -m devstack COMMAND`: see devstack/cli.py."""

import sys

from .cli import main

sys.exit(main())
