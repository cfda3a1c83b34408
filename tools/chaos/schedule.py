"""The fault schedule as data: a list of :class:`Step`, one fault at a time.

A step injects one fault while the workload keeps sending, removes it (heal,
restart) after ``hold`` seconds, then keeps the traffic on for at least
``recovery`` seconds and until every region sends and every subscriber receives
new messages again (at most ``max_recovery`` seconds), before the next step.
:func:`build` makes the short and the full schedule from the same step kinds, so
they share every line of the code that runs them (:mod:`tools.chaos.faults`).

Actions:

* ``baseline``: no fault (the workload's own noise floor).
* ``kill``: SIGKILL of a service process (``command-us-east``, ``edge-eu`` ...), as
  a crash: the harness's watchdog is expected to restart it; if it is not back
  within ``restart_wait`` seconds the schedule restarts it and says so.
* ``restart``: graceful restart (SIGTERM, start again) of a service process.
* ``kill-nats``: SIGKILL of a NATS node (``us-east-1``), as a crash: the harness's
  watchdog restarts it (same ports, same store dir); if it is not back within
  ``restart_wait`` seconds the schedule does, and says so. The full schedule kills
  every node of every region (three per region on ``ha``).
* ``restart-nats``: graceful restart of a NATS node.
* ``partition``: :meth:`mesh.harness.wan.Wan.cut` between two regions (``a|b``):
  every link (NATS gateways, Valkey replication, the command link) for ``hold`` s.
* ``cut-gateways``: only the NATS gateway links between two regions, so commands
  keep reaching the primary while the secondary's mirror and live deliveries do not.
* ``cut-link``: only a secondary region's command link (the WAN proxy its edge
  reaches the Command Service through), for ``hold`` s.

Example:
    >>> from mesh.topology import load
    >>> [s.name for s in build("short", load("dev"), {"notification-eu-1"})]
    ['baseline', 'cut-gateways us-east|eu 65s', 'kill notification-eu-1']
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from mesh.topology import Topology

__all__ = ["ACTIONS", "SCHEDULES", "Step", "build"]

ACTIONS = (
    "baseline",
    "kill",
    "restart",
    "kill-nats",
    "restart-nats",
    "partition",
    "cut-gateways",
    "cut-link",
)
SCHEDULES = ("full", "short")

GATEWAY_CUT = 65.0
"""Seconds of the gateway cut. Measured on nats-server 2.15.1 (docs/chaos.md): a cut's
effect on the mirror is not monotonic in its length — the mirror's consumer-create
request sent during the cut waits 30 s, then backs off 10 s, 20 s, ... — and a 35 s
cut left the mirror 26 s behind after the heal (less than the notification service's
30 s catch-up timeout), a 65 s one 37 s and more (it resumed only once traffic
stopped). 65 s makes today's skip show every time, and is >= 30 s as issue 12 asks."""


@dataclass(frozen=True)
class Step:
    """One fault of the schedule."""

    action: str
    """One of :data:`ACTIONS`."""
    target: str = ""
    """A service (``kill``/``restart``), a NATS node (``us-east-1``), a region pair
    (``us-east|eu``) or a secondary region (``cut-link``)."""
    hold: float = 0.0
    """Seconds a cut lasts."""
    recovery: float = 15.0
    """Seconds of traffic after the fault ends, at least."""
    max_recovery: float = 60.0
    """Seconds after the fault ends by which the next step starts whether or not all caught up."""
    restart_wait: float = 30.0
    """Kills: seconds to wait for the harness to restart the process before the schedule does."""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown action {self.action!r}; one of {', '.join(ACTIONS)}")

    @property
    def name(self) -> str:
        """How the step appears in the table."""
        if self.action == "baseline":
            return "baseline"
        held = f" {self.hold:.0f}s" if self.hold else ""
        return f"{self.action} {self.target}{held}"


def build(kind: str, topology: Topology, services: Collection[str] | None = None) -> list[Step]:
    """The ``full`` or ``short`` schedule for a topology.

    Args:
        kind: ``full`` (every fault kind, every NATS node) or ``short`` (the ``make test``
            version: a gateway cut longer than the notification service's 30 s catch-up
            timeout, and a kill -9 of a secondary's notification instance).
        topology: The mesh's regions and NATS nodes.
        services: Names of the running processes (``mesh.services`` and
            ``mesh.processes``); steps on processes the mesh does not run are left out
            (the runner lists them). None: keep every step.

    Raises:
        ValueError: Unknown ``kind``.
    """
    primary = topology.primary
    secondary = topology.secondaries[0] if topology.secondaries else None
    pair = f"{primary}|{secondary}" if secondary else ""
    if kind == "short":
        steps = [Step("baseline", recovery=5)]
        if secondary:
            steps.append(Step("cut-gateways", pair, hold=GATEWAY_CUT, recovery=10, max_recovery=45))
            steps.append(Step("kill", f"notification-{secondary}-1", recovery=10, max_recovery=40))
        return [s for s in steps if _runs(s, services)]
    if kind != "full":
        raise ValueError(f"unknown schedule {kind!r}; one of {', '.join(SCHEDULES)}")
    steps = [Step("baseline", recovery=10)]
    for name in (
        # Every instance: issue 12 runs two Command and Fan-Out services on ha.
        *_instances(f"command-{primary}", services),
        *_instances(f"fanout-{primary}", services),
        *(f"notification-{r}-1" for r in (*topology.secondaries, primary)),
        *(f"worker-{r}" for r in (*topology.secondaries, primary)),
        *(f"query-{r}" for r in topology.secondaries),
        *(_edge(r, services) for r in topology.secondaries),
    ):
        steps.append(Step("kill", name))
    for region in topology.regions:
        for i in range(1, region.nats_nodes + 1):
            steps.append(Step("kill-nats", f"{region.name}-{i}", restart_wait=10, recovery=15))
    if secondary:
        steps.append(Step("cut-link", secondary, hold=20))
    steps.append(Step("restart", f"notification-{secondary or primary}-1"))
    steps.append(Step("restart", f"command-{primary}"))
    for name in topology.region_names:
        steps.append(Step("restart-nats", f"{name}-1"))
    # Last: what they leave behind (a mirror that stays stalled while traffic flows)
    # would otherwise spill into the windows of the faults after them.
    if secondary:
        steps.append(Step("partition", pair, hold=35, recovery=15, max_recovery=90))
        steps.append(Step("cut-gateways", pair, hold=GATEWAY_CUT, recovery=15, max_recovery=90))
    return [s for s in steps if _runs(s, services)]


def _instances(base: str, services: Collection[str] | None) -> list[str]:
    """``base`` and every ``base-<n>`` the mesh runs (just ``base`` if it runs none)."""
    names = sorted(n for n in services or () if n == base or n.startswith(f"{base}-"))
    return names or [base]


def _edge(region: str, services: Collection[str] | None) -> str:
    """The edge process of a region: ``edge-<region>`` (the Python edge), or an Envoy's."""
    for name in sorted(services or ()):
        if name.startswith((f"edge-{region}", f"envoy-{region}")):
            return name
    return f"edge-{region}"


def _runs(step: Step, services: Collection[str] | None) -> bool:
    return services is None or step.action not in ("kill", "restart") or step.target in services
