"""``python -m services.edge [CONFIG.json]``: runs a region's public edge."""

from __future__ import annotations

import asyncio
import sys

from mesh.core import config as config_mod
from mesh.rpc.server import configure_logging
from services.edge.config import EdgeConfig
from services.edge.server import EdgeServer

if __name__ == "__main__":
    cfg = config_mod.load(EdgeConfig, sys.argv[1] if len(sys.argv) > 1 else None)
    configure_logging(cfg.log_level, "edge")
    asyncio.run(EdgeServer(cfg).run_until_signal())
