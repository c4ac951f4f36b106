"""``python -m service``: the same as the ``marker-ingest`` command."""

import sys

from service.cli import main

sys.exit(main())
