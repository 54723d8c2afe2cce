"""`python -m outbox_relay` is the `outbox-relay` command."""

from __future__ import annotations

import sys

from outbox_relay.cli import main

sys.exit(main())
