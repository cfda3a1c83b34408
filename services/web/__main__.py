"""``python -m services.web [CONFIG.json]``: runs a region's web service (behind its Envoy edge)."""

from __future__ import annotations

import sys

from mesh.core import config as config_mod, loop
from mesh.rpc.server import configure_logging
from services.web.config import WebConfig
from services.web.server import WebServer

if __name__ == "__main__":
    cfg = config_mod.load(WebConfig, sys.argv[1] if len(sys.argv) > 1 else None)
    configure_logging(cfg.log_level, "web")
    loop.run(WebServer(cfg).run_until_signal())
