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
from mesh.harness.process import ManagedProcess, Supervised, wait_until
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


class Toxiproxy(Supervised):
    """A Toxiproxy server process and a client for its HTTP API, supervised.

    Toxiproxy keeps its proxies in memory only, so this client remembers every
    proxy it created, whether it is enabled and its toxics; a restart (the watchdog's
    after a crash, or :meth:`restart`) puts them all back on the same listen
    addresses before the API counts as ready, so links come back as they were
    (cut links stay cut).
    """

    def __init__(self, run_dir: Path, host: str = "127.0.0.1") -> None:
        """Prepares a server whose log goes to ``run_dir/logs/toxiproxy.log``."""
        super().__init__()
        self.name = "toxiproxy"
        self.kind = "toxiproxy"
        self.host = host
        self.port = allocate(host)
        self._run_dir = run_dir
        # argv is filled in by start(): the binary may still have to be built.
        self.process = ManagedProcess("toxiproxy", [], run_dir / "logs" / "toxiproxy.log",
                                      env={"LOG_LEVEL": "warn"})  # fmt: skip
        self._client = httpx.AsyncClient(base_url=f"http://{host}:{self.port}", timeout=10.0)
        self._proxies: dict[str, dict[str, Any]] = {}
        """Name -> the proxy as created (``listen``, ``upstream``, ``enabled``)."""
        self._toxics: dict[str, dict[str, dict[str, Any]]] = {}
        """Proxy name -> toxic name -> the toxic's body as posted."""

    @property
    def api_url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://{self.host}:{self.port}"

    async def start(self, timeout: float = 15.0) -> None:
        """Builds (once per machine) and starts the server; returns when its API answers.

        On a restart, every proxy and toxic created earlier is created again first.
        """
        self._expected_exit = False
        binary = await TOXIPROXY.ensure_async()
        self.process.argv = [str(binary), "-host", self.host, "-port", str(self.port)]
        await self.process.start()

        async def ready() -> bool:
            return (await self._client.get("/version")).status_code == 200

        await wait_until(
            ready, timeout=timeout, what="toxiproxy API", alive=self.process.check_alive
        )
        if self._proxies:
            await self._restore()

    async def _restore(self) -> None:
        """Creates the remembered proxies and toxics in the fresh server."""
        for name, proxy in self._proxies.items():
            await self._call("POST", "/proxies", {"name": name, **proxy})
            for body in self._toxics.get(name, {}).values():
                await self._call("POST", f"/proxies/{name}/toxics", body)
        logger.info("toxiproxy restarted: %d proxies restored", len(self._proxies))

    async def stop(self) -> None:
        """Stops the server and closes the client."""
        self._expected_exit = True
        await self._client.aclose()
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
        proxy = {"listen": listen, "upstream": upstream, "enabled": True}
        await self._call("POST", "/proxies", {"name": name, **proxy})
        self._proxies[name] = proxy

    async def set_enabled(self, name: str, enabled: bool) -> None:
        """Enables or disables (resets and refuses connections of) a proxy."""
        await self._call("POST", f"/proxies/{name}", {"enabled": enabled})
        if name in self._proxies:
            self._proxies[name]["enabled"] = enabled

    async def set_latency(self, name: str, latency_ms: int, jitter_ms: int = 0) -> None:
        """Sets the one-way latency of a proxy, in both directions (replacing earlier toxics)."""
        existing = {t["name"] for t in await self._call("GET", f"/proxies/{name}/toxics")}
        for stream in ("upstream", "downstream"):
            toxic = f"latency_{stream}"
            if toxic in existing:
                await self._call("DELETE", f"/proxies/{name}/toxics/{toxic}")
                self._toxics.get(name, {}).pop(toxic, None)
            if latency_ms or jitter_ms:
                await self._post_toxic(name, toxic, "latency", stream,
                                       {"latency": latency_ms, "jitter": jitter_ms})  # fmt: skip

    async def _post_toxic(
        self, name: str, toxic: str, kind: str, stream: str, attributes: dict[str, Any]
    ) -> None:
        body = {"name": toxic, "type": kind, "stream": stream, "toxicity": 1.0,
                "attributes": attributes}  # fmt: skip
        await self._call("POST", f"/proxies/{name}/toxics", body)
        self._toxics.setdefault(name, {})[toxic] = body

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
        await self._post_toxic(name, toxic, kind, stream, attributes)

    async def remove_toxic(self, name: str, toxic: str) -> None:
        """Removes a toxic added by :meth:`add_toxic`."""
        await self._call("DELETE", f"/proxies/{name}/toxics/{toxic}")
        self._toxics.get(name, {}).pop(toxic, None)

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
