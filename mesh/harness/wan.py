"""The emulated WAN: Toxiproxy link proxies between regions.

``tc netem`` is not available on the machines chatmesh is developed on, so
region-to-region TCP traffic (NATS gateways, Valkey replication, Cassandra
inter-DC, commands forwarded to the primary) goes through user-space proxies in
one Toxiproxy server. Each proxy belongs to an ordered region pair: a process in
``src`` dials the proxy, which forwards to a listener in ``dst`` after adding the
link's one-way latency in each direction. :meth:`Wan.cut` disables every proxy
of a pair (connections are reset and new ones refused, as in a partition) and
:meth:`Wan.heal` re-enables them.

Example:
    >>> async def demo(wan: Wan) -> None:  # doctest: +SKIP
    ...     ep = await wan.proxy("eu", "us-east", "valkey", ("127.0.0.1", 6379))
    ...     await wan.cut("eu", "us-east")
    ...     await wan.heal("eu", "us-east")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from mesh.harness.ports import allocate
from mesh.harness.process import ManagedProcess, wait_until
from mesh.harness.servers.gotools import TOXIPROXY
from mesh.topology import Topology

__all__ = ["LinkProxy", "Toxiproxy", "Wan"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkProxy:
    """One proxy of the WAN."""

    name: str
    """Toxiproxy's name for it: ``<src>__<dst>__<service>``."""
    src: str
    """Region whose processes dial it."""
    dst: str
    """Region it forwards to."""
    listen: tuple[str, int]
    """Where ``src`` connects."""
    upstream: tuple[str, int]
    """The real listener in ``dst``."""

    @property
    def address(self) -> str:
        """``host:port`` to dial."""
        return f"{self.listen[0]}:{self.listen[1]}"


class Toxiproxy:
    """A Toxiproxy server process and a client for its HTTP API."""

    def __init__(self, run_dir: Path, host: str = "127.0.0.1") -> None:
        """Prepares a server whose log goes to ``run_dir/logs/toxiproxy.log``."""
        self.host = host
        self.port = allocate(host)
        self._run_dir = run_dir
        self.process: ManagedProcess | None = None
        self._client = httpx.AsyncClient(base_url=f"http://{host}:{self.port}", timeout=10.0)

    @property
    def api_url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://{self.host}:{self.port}"

    async def start(self, timeout: float = 15.0) -> None:
        """Builds (once per machine) and starts the server; returns when its API answers."""
        binary = await TOXIPROXY.ensure_async()
        self.process = ManagedProcess(
            "toxiproxy",
            [str(binary), "-host", self.host, "-port", str(self.port)],
            self._run_dir / "logs" / "toxiproxy.log",
            env={"LOG_LEVEL": "warn"},
        )
        await self.process.start()

        async def ready() -> bool:
            return (await self._client.get("/version")).status_code == 200

        await wait_until(
            ready, timeout=timeout, what="toxiproxy API", alive=self.process.check_alive
        )

    async def stop(self) -> None:
        """Stops the server and closes the client."""
        await self._client.aclose()
        if self.process is not None:
            await self.process.stop()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = await self._client.request(method, path, json=body)
        if response.status_code >= 300:
            raise RuntimeError(
                f"toxiproxy {method} {path}: {response.status_code} {response.text.strip()}"
            )
        return response.json() if response.content else None

    async def create_proxy(self, name: str, listen: str, upstream: str) -> None:
        """Creates an enabled proxy."""
        await self._call(
            "POST",
            "/proxies",
            {"name": name, "listen": listen, "upstream": upstream, "enabled": True},
        )

    async def set_enabled(self, name: str, enabled: bool) -> None:
        """Enables or disables (resets and refuses connections of) a proxy."""
        await self._call("POST", f"/proxies/{name}", {"enabled": enabled})

    async def set_latency(self, name: str, latency_ms: int, jitter_ms: int = 0) -> None:
        """Sets the one-way latency of a proxy, in both directions (replacing earlier toxics)."""
        existing = {t["name"] for t in await self._call("GET", f"/proxies/{name}/toxics")}
        for stream in ("upstream", "downstream"):
            toxic = f"latency_{stream}"
            if toxic in existing:
                await self._call("DELETE", f"/proxies/{name}/toxics/{toxic}")
            if latency_ms or jitter_ms:
                await self._call(
                    "POST",
                    f"/proxies/{name}/toxics",
                    {
                        "name": toxic,
                        "type": "latency",
                        "stream": stream,
                        "toxicity": 1.0,
                        "attributes": {"latency": latency_ms, "jitter": jitter_ms},
                    },
                )

    async def add_toxic(
        self, name: str, toxic: str, kind: str, stream: str, attributes: dict[str, Any]
    ) -> None:
        """Adds toxic ``toxic`` of type ``kind`` (``timeout``, ``latency`` ...) to one direction.

        Args:
            name: The proxy.
            toxic: A name for the toxic (to remove it later).
            kind: Toxiproxy's toxic type.
            stream: ``upstream`` (towards the listener) or ``downstream`` (back to the dialler).
            attributes: The type's attributes (``{"timeout": 0}``: drop all data, keep the
                connection open).
        """
        await self._call(
            "POST",
            f"/proxies/{name}/toxics",
            {
                "name": toxic,
                "type": kind,
                "stream": stream,
                "toxicity": 1.0,
                "attributes": attributes,
            },
        )

    async def remove_toxic(self, name: str, toxic: str) -> None:
        """Removes a toxic added by :meth:`add_toxic`."""
        await self._call("DELETE", f"/proxies/{name}/toxics/{toxic}")

    async def proxies(self) -> dict[str, Any]:
        """The server's view of every proxy (for ``chatmesh status``)."""
        result: dict[str, Any] = await self._call("GET", "/proxies")
        return result


class Wan:
    """The region-to-region links of a topology, as Toxiproxy proxies."""

    def __init__(self, topology: Topology, toxiproxy: Toxiproxy) -> None:
        """Binds the topology's latencies to a started Toxiproxy."""
        self.topology = topology
        self.toxiproxy = toxiproxy
        self._proxies: dict[str, LinkProxy] = {}

    @property
    def proxies(self) -> list[LinkProxy]:
        """Every proxy created so far."""
        return list(self._proxies.values())

    async def proxy(
        self,
        src: str,
        dst: str,
        service: str,
        upstream: tuple[str, int],
        *,
        listen_host: str = "127.0.0.1",
        listen: tuple[str, int] | None = None,
    ) -> LinkProxy:
        """Creates the proxy through which ``src`` reaches ``upstream`` in ``dst``.

        Args:
            src: Region of the dialling processes.
            dst: Region of the upstream listener (must differ from ``src``).
            service: What flows through it (``nats-gw-1``, ``valkey``, ...); unique per pair.
            upstream: The real ``(host, port)`` in ``dst``.
            listen_host: Loopback address the proxy listens on (port allocated).
            listen: Exact ``(host, port)`` to listen on instead (e.g. a Cassandra
                node's broadcast address, which peers dial on the storage port).

        Returns:
            The proxy, already carrying the link's latency.
        """
        link = self.topology.link(src, dst)
        name = f"{src}__{dst}__{service}"
        if name in self._proxies:
            raise ValueError(f"proxy {name} exists already")
        if listen is None:
            listen = (listen_host, allocate(listen_host))
        await self.toxiproxy.create_proxy(
            name, f"{listen[0]}:{listen[1]}", f"{upstream[0]}:{upstream[1]}"
        )
        await self.toxiproxy.set_latency(name, link.latency_ms, link.jitter_ms)
        proxy = LinkProxy(name, src, dst, listen, upstream)
        self._proxies[name] = proxy
        logger.debug("link proxy %s %s -> %s:%s", name, proxy.address, *upstream)
        return proxy

    def _between(self, a: str, b: str) -> list[LinkProxy]:
        return [p for p in self._proxies.values() if {p.src, p.dst} == {a, b}]

    async def cut(self, a: str, b: str) -> None:
        """Partitions regions ``a`` and ``b``: every proxy between them resets and refuses."""
        for proxy in self._between(a, b):
            await self.toxiproxy.set_enabled(proxy.name, False)
        logger.info("WAN link %s <-> %s cut", a, b)

    async def heal(self, a: str, b: str) -> None:
        """Restores every proxy between ``a`` and ``b``."""
        for proxy in self._between(a, b):
            await self.toxiproxy.set_enabled(proxy.name, True)
        logger.info("WAN link %s <-> %s healed", a, b)

    async def set_latency(self, a: str, b: str, latency_ms: int, jitter_ms: int = 0) -> None:
        """Changes the one-way latency between ``a`` and ``b`` at run time."""
        for proxy in self._between(a, b):
            await self.toxiproxy.set_latency(proxy.name, latency_ms, jitter_ms)
