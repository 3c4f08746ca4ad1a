"""Entry point: ``python -m aop_client.collector`` (see aop_client.collector.cli)."""

import sys

from .cli import main

sys.exit(main())
