"""Running a schedule step against a live :class:`~mesh.harness.supervisor.Mesh`.

:func:`run_step` injects the step's fault, removes it, waits out the recovery
(traffic stays on throughout) and returns the :class:`~tools.chaos.recording.Window`
it made, whose ``notes`` say what happened: who brought a killed process back and
after how long, when every region caught up again, what failed.

Kills are dealt as crashes (SIGKILL to the process group, without telling the
harness), so a supervisor that restarts crashed processes gets to do its job; the
step only steps in if nothing did within ``restart_wait`` seconds, and records
``restarted_by: schedule``. Links are always healed, even when the step fails.

Example:
    >>> async def demo(mesh, workload) -> None:  # doctest: +SKIP
    ...     step = Step("kill", "fanout-us-east")
    ...     window = await run_step(mesh, step, 1, workload.clock, workload.caught_up)
    ...     print(window.notes["restarted_by"], window.notes["back_after_s"])
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from mesh.harness.nats import NatsNode
from mesh.harness.process import ManagedProcess, wait_until
from mesh.harness.supervisor import Mesh
from tools.chaos.recording import Window
from tools.chaos.schedule import Step

__all__ = ["run_step"]

logger = logging.getLogger(__name__)


Probes = Callable[[float], dict[str, bool]]
"""Given a fault's end: probe name -> whether that part works again since then."""


async def run_step(
    mesh: Mesh, step: Step, index: int, clock: Callable[[], float], probes: Probes
) -> Window:
    """Runs one step; returns its window (``until`` is filled in by the caller).

    Args:
        mesh: The running mesh.
        step: What to do.
        index: The step's position in the schedule.
        clock: The run's clock.
        probes: What must work again before the next step (the workload's sends and
            streams, the mirrors' catch-up).
    """
    notes: dict[str, Any] = {}
    start = clock()
    try:
        end, recover_from = await _inject(mesh, step, clock, notes)
    except Exception as exc:
        logger.exception("step %s failed", step.name)
        notes["error"] = f"{type(exc).__name__}: {exc}"[:400]
        end = recover_from = clock()
    window = Window(
        index, step.name, step.action, start, end, notes=notes, recover_from=recover_from
    )
    await _recover(step, end, clock, probes, notes)
    return window


async def _recover(
    step: Step, end: float, clock: Callable[[], float], probes: Probes, notes: dict[str, Any]
) -> None:
    """Traffic for ``recovery`` seconds, then until everything works again (bounded)."""
    await asyncio.sleep(max(0.0, end + step.recovery - clock()))
    while True:
        state = probes(end)
        if all(state.values()):
            notes["caught_up_after_s"] = round(clock() - end, 2)
            return
        if clock() >= end + step.max_recovery:
            notes["not_caught_up_after_s"] = step.max_recovery
            notes["still_waiting"] = sorted(k for k, ok in state.items() if not ok)
            return
        await asyncio.sleep(0.5)


Marks = tuple[float, float]
"""(end, recover_from): when the fault was over (healed, the process serving again),
and from when recovery counts (the heal for a link; the moment the process was gone
for a kill or a restart: bringing it back is part of recovering, whoever did it)."""


async def _inject(
    mesh: Mesh, step: Step, clock: Callable[[], float], notes: dict[str, Any]
) -> Marks:
    """Performs the fault and removes it."""
    action = step.action
    if action == "baseline":
        now = clock()
        return now, now
    if action == "kill":
        return await _kill_service(mesh, step, clock, notes)
    if action == "restart":
        svc = mesh.services[step.target]
        await svc.stop()
        gone = clock()
        await svc.restart()
        svc.watch()
        notes["back_after_s"] = round(clock() - gone, 2)
        return clock(), gone
    if action in ("kill-nats", "restart-nats"):
        return await _nats(mesh, step, clock, notes)
    if action in ("partition", "cut-gateways", "cut-link"):
        return await _cut(mesh, step, clock, notes)
    raise ValueError(f"unknown action {action!r}")


async def _within(seconds: float, condition: Callable[[], bool]) -> bool:
    """Whether ``condition`` became true within ``seconds`` (polled)."""

    async def check() -> bool:
        return condition()

    try:
        await wait_until(check, timeout=seconds, what="restart", interval=0.1)
    except TimeoutError:
        return False
    return True


def _process_named(mesh: Mesh, name: str) -> ManagedProcess:
    """The current process object of a service (a restart may replace it)."""
    svc = mesh.services.get(name)
    if svc is not None:
        proc: ManagedProcess = svc.process
        return proc
    return mesh.processes[name]


async def _kill_service(
    mesh: Mesh, step: Step, clock: Callable[[], float], notes: dict[str, Any]
) -> Marks:
    proc = _process_named(mesh, step.target)
    old_pid = proc.pid
    if old_pid is None:
        raise RuntimeError(f"{step.target} is not running")
    killed_at = clock()
    proc.signal(signal.SIGKILL)  # a crash: the harness is not told
    svc = mesh.services.get(step.target)

    def back() -> bool:
        current = _process_named(mesh, step.target)
        if not current.running or current.pid == old_pid:
            return False
        # A chatmesh service writes its ready file once it serves (the harness
        # removed the old one before starting it again).
        return svc is None or svc.ready_path.exists()

    if await _within(step.restart_wait, back):
        notes["restarted_by"] = "harness"
    else:
        notes["restarted_by"] = "schedule"
        current = _process_named(mesh, step.target)
        if current.running:  # started but never ready: stop it before starting again
            await current.stop()
        if svc is not None:
            await svc.restart()
            svc.watch()
        else:
            await current.start()
    notes["back_after_s"] = round(clock() - killed_at, 2)
    return clock(), killed_at


def _nats_node(mesh: Mesh, name: str) -> NatsNode:
    for nodes in mesh.nats_nodes.values():
        for node in nodes:
            if node.plan.server_name == name:
                return node
    raise KeyError(f"no NATS node {name}")


async def _nats_ready(mesh: Mesh, node: NatsNode) -> None:
    region = node.plan.region
    await node.wait_ready(
        expected_routes=mesh.topology.region(region).nats_nodes - 1,
        expected_gateways=set(mesh.topology.region_names) - {region},
        timeout=60,
    )


async def _nats(mesh: Mesh, step: Step, clock: Callable[[], float], notes: dict[str, Any]) -> Marks:
    node = _nats_node(mesh, step.target)
    if step.action == "restart-nats":
        await node.stop()
        stopped = clock()
        await node.start()
        node.watch()
        await _nats_ready(mesh, node)
        notes["back_after_s"] = round(clock() - stopped, 2)
        return clock(), stopped
    old_pid = node.process.pid
    if old_pid is None:
        raise RuntimeError(f"NATS node {step.target} is not running")
    killed_at = clock()
    node.process.signal(signal.SIGKILL)  # a crash: the harness's watchdog restarts it

    def back() -> bool:
        current = _nats_node(mesh, step.target).process
        return current.running and current.pid != old_pid

    if await _within(step.restart_wait, back):
        notes["restarted_by"] = "harness"
    else:
        notes["restarted_by"] = "schedule"
        await node.process.wait()
        await node.start()
        node.watch()
    restarted = clock()
    await _nats_ready(mesh, _nats_node(mesh, step.target))
    notes["down_s"] = round(restarted - killed_at, 2)
    notes["ready_after_s"] = round(clock() - killed_at, 2)
    return clock(), killed_at


async def _cut(mesh: Mesh, step: Step, clock: Callable[[], float], notes: dict[str, Any]) -> Marks:
    toxiproxy = mesh.wan.toxiproxy
    if step.action == "cut-link":
        region = step.target
        grpc = mesh.endpoints[region]["grpc"]
        addresses = set(grpc.get("commands") or [grpc["command"]])  # every instance's link
        address = grpc["command"]
        proxies = [p for p in mesh.wan.proxies if p.address in addresses]
        if not proxies:
            raise RuntimeError(f"{region}'s command endpoint {address} is not a WAN proxy")
    else:
        a, b = step.target.split("|")
        proxies = [p for p in mesh.wan.proxies if {p.src, p.dst} == {a, b}]
        if step.action == "cut-gateways":
            proxies = [p for p in proxies if "__nats-gw-" in p.name]
    notes["links"] = sorted(p.name for p in proxies)
    try:
        for proxy in proxies:
            await toxiproxy.set_enabled(proxy.name, False)
        await asyncio.sleep(step.hold)
    finally:
        for proxy in proxies:
            await toxiproxy.set_enabled(proxy.name, True)
    healed = clock()
    return healed, healed
