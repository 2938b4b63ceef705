"""``python -m netk8s`` runs the CLI."""

import sys

from netk8s.cli.main import main

sys.exit(main())
