"""`python -m anomaflow ...` is the `anomaflow` command."""

import sys

from anomaflow.flows.cli import main

sys.exit(main())
