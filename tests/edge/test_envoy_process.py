"""The edge processes themselves: one real envoy per region, supervised like the services (issue 11)."""

from __future__ import annotations

import os
import signal
import subprocess

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.harness.envoy import EnvoyProcess, envoy_binary
from mesh.harness.supervisor import Mesh
from tests.conftest import INTENDED_CRASHES
from tests.helpers import eventually

pytestmark = pytest.mark.services


def _processes() -> list[tuple[int, str, list[str]]]:
    out = subprocess.run(
        ["ps", "-ww", "-eo", "pid=,comm=,args="], capture_output=True, text=True, check=True
    ).stdout
    rows = []
    for line in out.splitlines():
        pid, comm, *args = line.split()
        rows.append((int(pid), comm, args))
    return rows


async def test_one_envoy_per_region_and_no_python_edge(dev_mesh: Mesh) -> None:
    run_dir = str(dev_mesh.run_dir)
    mine = [(pid, comm, args) for pid, comm, args in _processes() if run_dir in " ".join(args)]
    envoys = [args for _, comm, args in mine if comm == "envoy" and args[0] == str(envoy_binary())]
    configs = sorted(args[args.index("-c") + 1].rsplit("/", 1)[1] for args in envoys)
    assert configs == sorted(f"envoy-{r}.json" for r in dev_mesh.topology.region_names)
    # No Python process of this mesh proxies client traffic: the services and
    # each region's web service (behind Envoy) are all there is.
    python_modules = sorted(args[args.index("-m") + 1] for _, _, args in mine if "-m" in args)
    assert "services.edge" not in python_modules
    assert python_modules.count("services.web") == len(dev_mesh.topology.region_names)


async def _serving(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        resp = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
    return resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_killed_envoy_is_restarted_on_the_same_address(dev_mesh: Mesh) -> None:
    envoy = dev_mesh.services["envoy-eu"]
    assert isinstance(envoy, EnvoyProcess)
    old_pid = envoy.process.pid
    assert old_pid is not None and await _serving(envoy.address)
    crashes = envoy.crashes
    INTENDED_CRASHES["envoy-eu"] += 1
    os.kill(old_pid, signal.SIGKILL)  # as the OOM killer would: not through the harness

    async def restarted() -> bool:
        return (
            envoy.crashes == crashes + 1
            and envoy.process.pid not in (None, old_pid)
            and await _serving(envoy.address)
        )

    await eventually(restarted, timeout=30, what="envoy-eu restarted by the supervisor")
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{envoy.admin_url}/ready")).text.strip() == "LIVE"
    # Its log says it was restarted.
    assert envoy.process.log_path.read_text().count(f"starting {envoy.name}") >= 2
