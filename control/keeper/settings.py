"""The keeper's settings that command lines show as defaults, in one place, free of the
keeper's heavy imports (asyncssh, httpx) so that `rbee --help` can name them."""

from __future__ import annotations

DEFAULT_REFRESH_S = 2.0  # how often a live view (the dashboard, the queen) probes each node
