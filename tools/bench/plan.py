"""What the benchmark does, how big, and the synthetic users and channels it uses.

:data:`FULL` is ``make bench`` (about 15 minutes for both topologies on a
2-core machine); :data:`QUICK` is the smoke version (< 60 s, ``dev`` only).
:func:`population` deterministically (from the seed) spreads users over the
regions and builds channels of ``channel_size`` members in which roughly half
the members live in the channel's home region and the rest in the others, so
every region pair carries traffic.

Example:
    >>> pop = population(["us-east", "eu"], "us-east", users=20, per_user=2, channel_size=10, seed=1)
    >>> len(pop.channels), len(pop.users["eu"])
    (4, 10)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = [
    "ALL_SCENARIOS",
    "FULL",
    "FULL_SINGLE",
    "QUICK",
    "QUICK_SINGLE",
    "SCENARIOS",
    "SINGLE",
    "ChannelSpec",
    "Plan",
    "Population",
    "SinglePlan",
    "population",
]

SCENARIOS: tuple[str, ...] = (
    "floor",
    "delivery",
    "history",
    "presence",
    "throughput",
    "routing",
    "flood",
)
"""The multi-region scenarios, in the order they run on a topology."""

SINGLE = "single"
"""The single-region scenario (issue 14's workload): runs on topology ``single`` by default."""

ALL_SCENARIOS: tuple[str, ...] = (*SCENARIOS, SINGLE)
"""Every scenario ``--scenarios`` accepts."""


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one benchmark run."""

    streams: int
    """Live Subscribe streams (one per user) spread over the regions."""
    per_user: int
    """Channels each stream user belongs to."""
    channel_size: int
    """Members per channel."""
    stream_open_budget_s: float
    """Seconds the streams may take to open; fewer streams (reported) if they take longer."""
    rate: float
    """Target send rate of the delivery scenario (messages/s over all regions)."""
    probe_s: float
    """Length of each sustainability probe before the delivery measurement."""
    delivery_s: float
    """Length of the measured delivery phase."""
    floor_rate: float
    """Messages/s of the bare-NATS floor."""
    floor_s: float
    """Length of the floor measurement."""
    throughput_rates: tuple[float, ...]
    """Send rates tried, in order, by the throughput scenario."""
    step_s: float
    """Length of each throughput step."""
    profile_s: float
    """Length of the profiled load step."""
    history_channels: int
    """Channels seeded for the history scenario."""
    history_messages: int
    """Messages per history channel (>= 50: a full GetHistory page)."""
    history_requests: int
    """GetHistory calls per region."""
    presence_samples: int
    """Stream openings per source region in the presence scenario."""
    routing_users: int
    """Users of the routing-table scenario."""
    routing_per_user: int
    """Channel memberships per routing-table user."""
    routing_instances: int
    """Fake notification instances sharing the routing-table users."""
    getroute_requests: int
    """GetRoute calls of the routing-table scenario."""
    min_rate: float = 10.0
    """The delivery scenario never scales below this rate."""
    poll_ms: float = 5.0
    """Presence poll interval (the measurement's resolution)."""


FULL = Plan(
    streams=2000,
    per_user=2,
    channel_size=10,
    stream_open_budget_s=60.0,
    rate=200.0,
    probe_s=8.0,
    delivery_s=30.0,
    floor_rate=200.0,
    floor_s=10.0,
    throughput_rates=(25, 50, 100, 150, 200, 300, 400, 600, 800),
    step_s=8.0,
    profile_s=10.0,
    history_channels=4,
    history_messages=60,
    history_requests=300,
    presence_samples=12,
    routing_users=50_000,
    routing_per_user=20,
    routing_instances=4,
    getroute_requests=2000,
)

QUICK = Plan(
    streams=40,
    per_user=2,
    channel_size=10,
    stream_open_budget_s=10.0,
    rate=20.0,
    probe_s=1.5,
    delivery_s=3.0,
    floor_rate=50.0,
    floor_s=1.5,
    throughput_rates=(20, 40),
    step_s=1.5,
    profile_s=2.0,
    history_channels=1,
    history_messages=55,
    history_requests=30,
    presence_samples=2,
    routing_users=2000,
    routing_per_user=20,
    routing_instances=2,
    getroute_requests=100,
    min_rate=5.0,
)


@dataclass(frozen=True)
class SinglePlan:
    """Sizes and durations of the single-region scenario (:mod:`tools.bench.single`)."""

    streams: int
    """Users, each with one Subscribe stream on a connection of its own."""
    channel_size: int
    """Members per channel (each user is in one channel: a send is ``channel_size`` deliveries)."""
    receivers: int
    """Load-generator processes holding the streams."""
    unary_procs: int
    """Load-generator processes sharing the closed-loop unary callers."""
    stream_open_budget_s: float
    """Seconds the streams may take to open; fewer streams (reported) if they take longer."""
    delivery_rate: float
    """Deliveries/s of the latency measurement (and of the bare-NATS floor)."""
    delivery_s: float
    """Length of the latency measurement at ``delivery_rate``."""
    floor_s: float
    """Length of the bare-NATS floor phase."""
    knee_steps: tuple[float, ...]
    """Rising deliveries/s of the knee search (it stops at the first failed step)."""
    step_s: float
    """Length of each knee step."""
    knee_budget_s: float
    """The knee search stops once it has run this long (reported)."""
    concurrencies: tuple[int, ...]
    """Closed-loop callers of the SendMessage and GetHistory rates."""
    unary_s: float
    """Length of each closed-loop rate measurement."""
    send_users: int
    """Users (without streams) sending in the SendMessage rate measurement."""
    history_channels: int
    """Channels with more than 50 messages read by GetHistory(50)."""
    history_messages: int
    """Messages per history channel."""


FULL_SINGLE = SinglePlan(
    streams=2000,
    channel_size=10,
    receivers=2,
    unary_procs=2,
    stream_open_budget_s=120.0,
    delivery_rate=1000.0,
    delivery_s=20.0,
    floor_s=10.0,
    knee_steps=(250, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000, 6500, 8000, 10000, 12500),
    step_s=8.0,
    knee_budget_s=150.0,
    concurrencies=(1, 8, 32),
    unary_s=8.0,
    send_users=1000,
    history_channels=8,
    history_messages=60,
)

QUICK_SINGLE = SinglePlan(
    streams=40,
    channel_size=10,
    receivers=1,
    unary_procs=1,
    stream_open_budget_s=15.0,
    delivery_rate=100.0,
    delivery_s=2.0,
    floor_s=1.5,
    knee_steps=(50, 100),
    step_s=1.5,
    knee_budget_s=10.0,
    concurrencies=(1, 8),
    unary_s=1.5,
    send_users=100,
    history_channels=1,
    history_messages=55,
)


@dataclass(frozen=True)
class ChannelSpec:
    """A channel to create."""

    name: str
    home: str
    """Region of its creator and of about half its members."""
    creator: str
    members: tuple[str, ...]
    """Every member, creator included."""


@dataclass
class Population:
    """Users per region and the channels joining them."""

    regions: list[str]
    primary: str
    users: dict[str, list[str]]
    """Region -> user ids living there."""
    channels: list[ChannelSpec]
    region_of: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.region_of = {u: r for r, users in self.users.items() for u in users}


def population(
    regions: list[str], primary: str, *, users: int, per_user: int, channel_size: int, seed: int
) -> Population:
    """Users spread evenly over ``regions`` and channels mixing regions (deterministic)."""
    rng = random.Random(seed)
    per_region = {
        r: users // len(regions) + (1 if i < users % len(regions) else 0)
        for i, r in enumerate(regions)
    }
    by_region = {r: [f"u-{r}-{i:05d}" for i in range(n)] for r, n in per_region.items()}
    n_channels = max(1, users * per_user // channel_size)
    pools: dict[str, list[str]] = {r: [] for r in regions}

    def take(region: str, exclude: set[str]) -> str:
        pool = pools[region]
        for _ in range(2):
            for i in range(len(pool) - 1, -1, -1):
                if pool[i] not in exclude:
                    return pool.pop(i)
            # Refill: every user gets another round of memberships.
            refill = [u for u in by_region[region] for _ in range(per_user)]
            rng.shuffle(refill)
            pool[:0] = refill
        raise ValueError(f"region {region} has too few users for a {channel_size}-member channel")

    channels = []
    for c in range(n_channels):
        home = regions[c % len(regions)]
        others = [r for r in regions if r != home] or [home]
        members: list[str] = []
        chosen: set[str] = set()
        home_count = (channel_size + 1) // 2 if len(regions) > 1 else channel_size
        # Rotate which remote region gets the odd seat so every pair stays balanced.
        remote = [others[(i + c) % len(others)] for i in range(channel_size - home_count)]
        for region in [home] * home_count + remote:
            user = take(region, chosen)
            chosen.add(user)
            members.append(user)
        channels.append(ChannelSpec(f"bench {c}", home, members[0], tuple(members)))
    return Population(list(regions), primary, by_region, channels)
