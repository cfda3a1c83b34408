"""The topology file: the one description of a deployment's regions and WAN.

Everything region-shaped (NATS configs, link proxies, Valkey replicas, Envoy
bootstraps, docker-compose) is generated from a :class:`Topology`. The file is
TOML; ``docs/topology.md`` documents every key, and :func:`load` reports every
problem at once, each with the key it concerns.

Example:
    >>> from mesh.topology import load
    >>> topo = load("dev")
    >>> topo.primary, [r.name for r in topo.regions]
    ('us-east', ['us-east', 'eu'])
    >>> topo.latency_ms("eu", "us-east")
    35
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN_DIR",
    "WRITES_EVERY_REGION",
    "WRITES_MODES",
    "WRITES_PRIMARY",
    "Limits",
    "Link",
    "NatsSettings",
    "Region",
    "StoreSettings",
    "Topology",
    "TopologyError",
    "builtin_names",
    "load",
    "parse",
]

BUILTIN_DIR = Path(__file__).parent / "builtin"

# The write modes (ADR-026). The same strings as mesh.bus.subjects.WRITES_*, which
# this layer cannot import (the topology sits below the bus); a test holds them equal.
WRITES_PRIMARY = "primary"
"""Every write goes to the primary region (ADR-010; the default)."""
WRITES_EVERY_REGION = "every-region"
"""Every region takes its own users' writes (ADR-026)."""
WRITES_MODES = (WRITES_PRIMARY, WRITES_EVERY_REGION)
"""The values of the top-level ``writes`` key."""

_REGION_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_DURATION_RE = re.compile(r"^\d+(ms|s|m|h)$")
_SIZE_RE = re.compile(r"^\d+(B|KB|MB|GB|TB)$")


class TopologyError(ValueError):
    """A topology file is missing, unreadable or invalid.

    Attributes:
        source: The file (or name) that was loaded.
        problems: Every problem found, each naming the key it concerns.
    """

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid topology {source}:\n{lines}")


@dataclass(frozen=True)
class Region:
    """One region of the deployment."""

    name: str
    """Region name: lowercase letters, digits and dashes (used in NATS subjects and server names)."""
    nats_nodes: int = 1
    """NATS servers in the region's cluster (1 to 5). ADR-010 runs 3 in production."""
    notification_instances: int = 1
    """Notification Service processes in the region (1 to 8)."""
    write_instances: int = 1
    """Command and Fan-Out Service instances (primary only, primary mode only; 1 or 2).
    With 2, one of each is active and the other on standby, by a lease in NATS KV
    (ADR-019). In the every-region mode every region runs one of each."""


@dataclass(frozen=True)
class Link:
    """The emulated WAN between two regions."""

    a: str
    """One end (the name that sorts first)."""
    b: str
    """The other end."""
    latency_ms: int
    """One-way delay added in each direction, in milliseconds (RTT = 2 x latency_ms)."""
    jitter_ms: int = 0
    """Random +/- variation of the delay, in milliseconds (at most latency_ms)."""


@dataclass(frozen=True)
class NatsSettings:
    """JetStream policy of the super-cluster."""

    sync_interval_primary: str = "always"
    """fsync policy of the primary region's servers, which hold the EVENTS stream
    (in the every-region mode: of every region's servers, as each holds the
    acknowledged writes of its own ``EVENTS_<REGION>``).

    ``always`` fsyncs every write before acknowledging it: an acknowledged event
    survives power loss (Jepsen, NATS 2.12.1, Dec 2025, showed the default 2 min
    interval losing acknowledged writes). A duration such as ``2m`` trades that
    for throughput; ``default`` leaves the server's default.
    """
    sync_interval_other: str = "default"
    """fsync policy of the other regions' servers. They hold mirrors that re-sync
    from the primary after a crash, so the server default is safe there (unused in
    the every-region mode, where no region holds only copies)."""
    events_replicas: int = 1
    """Replicas of the EVENTS stream and its regional mirrors (1 or 3; at most nats_nodes)."""
    events_max_age: str = "168h"
    """How long the EVENTS stream keeps events (history lives in the history store)."""
    duplicate_window: str = "10m"
    """JetStream de-duplication window for ``Nats-Msg-Id``; a retry within it is a no-op."""
    max_memory_store: str = "256MB"
    """JetStream memory store limit per server."""
    max_file_store: str = "4GB"
    """JetStream file store limit per server."""


@dataclass(frozen=True)
class StoreSettings:
    """Which data stores the services use."""

    backend: str = "embedded"
    """``embedded`` (SQLite per region, fed from the regional event mirror; needs
    nothing installed) or ``production`` (Cassandra multi-DC history + MongoDB-wire
    metadata)."""


@dataclass(frozen=True)
class Limits:
    """Per-user rate limits and quotas (token buckets: a sustained rate and a burst).

    The Command Service enforces the command limits for every region at once (all
    commands reach the primary); each Notification Service instance enforces the
    stream quota; each region's edge (Envoy ``local_ratelimit``, keyed by the
    token's subject) enforces ``edge_*`` over every public RPC. A rate of 0 with
    a burst of 0 turns that limit off.
    """

    send_per_s: float = 20.0
    """SendMessage, EditMessage and DeleteMessage per user per second, sustained."""
    send_burst: int = 20
    """Message writes a user may make at once after a quiet period."""
    typing_per_s: float = 4.0
    """SetTyping per user per second (a client refreshes every few seconds)."""
    typing_burst: int = 10
    """SetTyping calls at once."""
    create_channel_per_s: float = 1.0
    """CreateChannel per user per second, sustained."""
    create_channel_burst: int = 30
    """CreateChannel calls at once."""
    join_per_s: float = 2.0
    """JoinChannel per user per second, sustained."""
    join_burst: int = 30
    """JoinChannel calls at once."""
    streams_per_user: int = 16
    """Concurrent Subscribe streams per user on one Notification Service instance (0: no limit)."""
    edge_per_s: float = 200.0
    """Public RPCs per user per second at each edge (a coarse guard before the services)."""
    edge_burst: int = 400
    """Public RPCs per user at once at each edge."""


_LIMIT_RATES = ("send", "typing", "create_channel", "join", "edge")


@dataclass(frozen=True)
class Topology:
    """A validated deployment description."""

    name: str
    """Short name, shown by ``chatmesh status``."""
    primary: str
    """The region that takes writes (Command Service, Fan-Out Service, stream leaders).

    In the every-region mode every region writes; ``primary`` then names where what
    is still global lives: the Valkey primary (presence writes), the write-lease
    bucket, the fsync policy ``nats.sync_interval_primary``, and the region listed first."""
    regions: tuple[Region, ...]
    """All regions, the primary included, in file order."""
    links: tuple[Link, ...]
    """One link per pair of regions."""
    writes: str = WRITES_PRIMARY
    """``primary`` (every write goes to the primary, ADR-010) or ``every-region``
    (each region writes its own ``EVENTS_<REGION>`` and reads ``ALL_<REGION>``, ADR-026)."""
    nats: NatsSettings = field(default_factory=NatsSettings)
    """JetStream policy."""
    stores: StoreSettings = field(default_factory=StoreSettings)
    """Data store selection."""
    limits: Limits = field(default_factory=Limits)
    """Per-user rate limits and quotas."""

    def region(self, name: str) -> Region:
        """Returns the region called ``name``.

        Raises:
            KeyError: No such region.
        """
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)

    @property
    def region_names(self) -> list[str]:
        """Names of all regions, primary first."""
        return [self.primary] + [r.name for r in self.regions if r.name != self.primary]

    @property
    def every_region(self) -> bool:
        """True in the every-region write mode (ADR-026): a write path in each region."""
        return self.writes == WRITES_EVERY_REGION

    def writes_in(self, region: str) -> bool:
        """Whether ``region`` runs a Command and a Fan-Out Service (the primary, or all)."""
        return self.every_region or region == self.primary

    @property
    def secondaries(self) -> list[str]:
        """Names of the non-primary regions."""
        return [r.name for r in self.regions if r.name != self.primary]

    def link(self, a: str, b: str) -> Link:
        """Returns the link between regions ``a`` and ``b`` (in either order).

        Raises:
            KeyError: ``a == b`` or no such link.
        """
        lo, hi = sorted((a, b))
        for link in self.links:
            if (link.a, link.b) == (lo, hi):
                return link
        raise KeyError(f"{a}<->{b}")

    def sync_interval(self, region: str) -> str:
        """The fsync policy of ``region``'s NATS servers (see :class:`NatsSettings`)."""
        if self.writes_in(region):
            return self.nats.sync_interval_primary
        return self.nats.sync_interval_other

    def latency_ms(self, a: str, b: str) -> int:
        """One-way latency between two regions; 0 within a region."""
        return 0 if a == b else self.link(a, b).latency_ms

    def describe(self) -> str:
        """A human summary of what this topology starts."""
        lines = [
            f"topology {self.name!r}: primary {self.primary}, writes {self.writes}, "
            f"stores {self.stores.backend}"
        ]
        for region in self.regions:
            if self.every_region:
                role = "writes; primary of Valkey" if region.name == self.primary else "writes"
            else:
                role = "primary" if region.name == self.primary else "secondary"
            writers = (
                f", {region.write_instances} command/fan-out instances (active/standby)"
                if region.write_instances > 1
                else ""
            )
            lines.append(
                f"  region {region.name} ({role}): {region.nats_nodes} NATS node(s), "
                f"{region.notification_instances} notification instance(s){writers}"
            )
        for link in self.links:
            jitter = f" +/-{link.jitter_ms} ms" if link.jitter_ms else ""
            lines.append(
                f"  link {link.a} <-> {link.b}: {link.latency_ms} ms one-way{jitter} "
                f"({2 * link.latency_ms} ms RTT)"
            )
        n = self.nats
        streams = (
            f"EVENTS_<REGION> + ALL_<REGION> per region R{n.events_replicas}"
            if self.every_region
            else f"EVENTS R{n.events_replicas}"
        )
        fsync = (
            f"fsync every region={n.sync_interval_primary}"
            if self.every_region
            else f"fsync primary={n.sync_interval_primary} other={n.sync_interval_other}"
        )
        lines.append(f"  JetStream: {streams}, {fsync}, dedup window {n.duplicate_window}")
        return "\n".join(lines)


def builtin_names() -> list[str]:
    """Names of the topologies shipped with chatmesh."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def load(source: str | Path) -> Topology:
    """Loads and validates a topology from a path or a built-in name.

    Args:
        source: A path to a TOML file, or a built-in name such as ``dev``.

    Raises:
        TopologyError: The file is missing, not TOML, or invalid.
    """
    path = Path(source)
    if not path.exists() and (BUILTIN_DIR / f"{source}.toml").exists():
        path = BUILTIN_DIR / f"{source}.toml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        known = ", ".join(builtin_names())
        raise TopologyError(
            str(source), [f"cannot read it ({exc.strerror}); built-in topologies: {known}"]
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(str(path), [f"not valid TOML: {exc}"]) from None
    return parse(data, source=str(path))


def parse(data: dict[str, Any], *, source: str = "<dict>") -> Topology:
    """Validates already-parsed topology data.

    Raises:
        TopologyError: With every problem found.
    """
    problems: list[str] = []
    _unknown(data, {"name", "primary", "writes", "region", "link", "nats", "stores", "limits"},
             "", problems)  # fmt: skip

    name = data.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name: required, a non-empty string")
        name = "?"

    regions: list[Region] = []
    raw_regions = data.get("region")
    if not isinstance(raw_regions, list) or not raw_regions:
        problems.append("region: at least one [[region]] table is required")
        raw_regions = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_regions):
        where = f"region[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be a table")
            continue
        _unknown(raw, {"name", "nats_nodes", "notification_instances", "write_instances"},
                 where, problems)  # fmt: skip
        rname = raw.get("name")
        if not isinstance(rname, str) or not _REGION_RE.match(rname):
            problems.append(
                f"{where}.name: {rname!r} must be 2-32 lowercase letters, digits or dashes, "
                "starting with a letter"
            )
            continue
        if rname in seen:
            problems.append(f"{where}.name: region {rname!r} is declared twice")
            continue
        seen.add(rname)
        nodes = _int(raw, "nats_nodes", 1, 1, 5, f"region {rname}", problems)
        instances = _int(raw, "notification_instances", 1, 1, 8, f"region {rname}", problems)
        writers = _int(raw, "write_instances", 1, 1, 2, f"region {rname}", problems)
        regions.append(Region(rname, nodes, instances, writers))

    primary = data.get("primary")
    if not isinstance(primary, str) or primary not in seen:
        problems.append(f"primary: {primary!r} must name one of the regions {sorted(seen)}")
        primary = regions[0].name if regions else "?"
    writes = data.get("writes", WRITES_PRIMARY)
    if writes not in WRITES_MODES:
        problems.append(
            f"writes: {writes!r} must be {' or '.join(repr(m) for m in WRITES_MODES)} "
            f"(default {WRITES_PRIMARY!r})"
        )
        writes = WRITES_PRIMARY
    for region in regions:
        if region.write_instances == 1:
            continue
        if writes == WRITES_EVERY_REGION:
            problems.append(
                f"region {region.name}: write_instances: the every-region mode runs one "
                "Command and one Fan-Out Service per region (no active/standby pair yet)"
            )
        elif region.name != primary:
            problems.append(
                f"region {region.name}: write_instances: only the primary runs the write path"
            )

    links: list[Link] = []
    pairs: set[tuple[str, str]] = set()
    raw_links = data.get("link", [])
    if not isinstance(raw_links, list):
        problems.append("link: must be an array of [[link]] tables")
        raw_links = []
    for i, raw in enumerate(raw_links):
        where = f"link[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: must be a table")
            continue
        _unknown(raw, {"regions", "latency_ms", "jitter_ms"}, where, problems)
        ends = raw.get("regions")
        if (
            not isinstance(ends, list)
            or len(ends) != 2
            or not all(isinstance(e, str) for e in ends)
            or ends[0] == ends[1]
        ):
            problems.append(f"{where}.regions: must be two different region names")
            continue
        unknown = [e for e in ends if e not in seen]
        if unknown:
            problems.append(f"{where}.regions: unknown region(s) {unknown}")
            continue
        lo, hi = sorted(ends)
        if (lo, hi) in pairs:
            problems.append(f"{where}: the link {lo}<->{hi} is declared twice")
            continue
        pairs.add((lo, hi))
        label = f"link {lo}<->{hi}"
        if "latency_ms" not in raw:
            problems.append(f"{label}.latency_ms: required (one-way delay in ms)")
        latency = _int(raw, "latency_ms", 0, 0, 5000, label, problems)
        jitter = _int(raw, "jitter_ms", 0, 0, 5000, label, problems)
        if jitter > latency:
            problems.append(f"{label}.jitter_ms: {jitter} exceeds latency_ms {latency}")
        links.append(Link(lo, hi, latency, jitter))
    for lo, hi in combinations(sorted(seen), 2):
        if (lo, hi) not in pairs:
            problems.append(
                f"link: missing [[link]] between {lo!r} and {hi!r} (every pair needs one)"
            )

    nats = _nats(data.get("nats", {}), problems)
    primary_region = next((r for r in regions if r.name == primary), None)
    if primary_region and nats.events_replicas > primary_region.nats_nodes:
        problems.append(
            f"nats.events_replicas: {nats.events_replicas} exceeds the primary's "
            f"nats_nodes ({primary_region.nats_nodes})"
        )
    for region in regions:
        if nats.events_replicas > region.nats_nodes:
            problems.append(
                f"nats.events_replicas: region {region.name} has {region.nats_nodes} node(s), "
                f"too few for R{nats.events_replicas} mirrors"
            )

    stores = _stores(data.get("stores", {}), problems)
    limits = _limits(data.get("limits", {}), problems)

    if problems:
        raise TopologyError(source, problems)
    return Topology(
        str(name), str(primary), tuple(regions), tuple(links), str(writes), nats, stores, limits
    )


def _limits(raw: Any, problems: list[str]) -> Limits:
    if not isinstance(raw, dict):
        problems.append("limits: must be a table")
        return Limits()
    defaults = Limits()
    _unknown(raw, set(Limits.__dataclass_fields__), "limits", problems)
    values: dict[str, Any] = {}
    for action in _LIMIT_RATES:
        key = f"{action}_per_s"
        rate = raw.get(key, getattr(defaults, key))
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1e6:
            problems.append(f"limits.{key}: {rate!r} must be a number from 0 to 1000000")
        else:
            values[key] = float(rate)
        burst_key = f"{action}_burst"
        burst = _int(raw, burst_key, getattr(defaults, burst_key), 0, 1_000_000, "limits", problems)
        values[burst_key] = burst
        if key in values and (values[key] == 0) != (burst == 0):
            problems.append(
                f"limits.{action}: {key} and {burst_key} must both be 0 (no limit) or both positive"
            )
    values["streams_per_user"] = _int(
        raw, "streams_per_user", defaults.streams_per_user, 0, 100_000, "limits", problems
    )
    return Limits(**values)


def _nats(raw: Any, problems: list[str]) -> NatsSettings:
    if not isinstance(raw, dict):
        problems.append("nats: must be a table")
        return NatsSettings()
    defaults = NatsSettings()
    _unknown(raw, set(NatsSettings.__dataclass_fields__), "nats", problems)
    values: dict[str, Any] = {}
    for key in ("sync_interval_primary", "sync_interval_other"):
        value = raw.get(key, getattr(defaults, key))
        if not isinstance(value, str) or not (
            value in ("always", "default") or _DURATION_RE.match(value)
        ):
            problems.append(
                f"nats.{key}: {value!r} must be 'always', 'default' or a duration like '2m'"
            )
        else:
            values[key] = value
    for key in ("events_max_age", "duplicate_window"):
        value = raw.get(key, getattr(defaults, key))
        if not isinstance(value, str) or not _DURATION_RE.match(value):
            problems.append(f"nats.{key}: {value!r} must be a duration like '10m' or '168h'")
        else:
            values[key] = value
    for key in ("max_memory_store", "max_file_store"):
        value = raw.get(key, getattr(defaults, key))
        if not isinstance(value, str) or not _SIZE_RE.match(value):
            problems.append(f"nats.{key}: {value!r} must be a size like '256MB'")
        else:
            values[key] = value
    replicas = raw.get("events_replicas", defaults.events_replicas)
    if replicas not in (1, 3) or isinstance(replicas, bool):
        problems.append(f"nats.events_replicas: {replicas!r} must be 1 or 3")
    else:
        values["events_replicas"] = replicas
    return NatsSettings(**values)


def _stores(raw: Any, problems: list[str]) -> StoreSettings:
    if not isinstance(raw, dict):
        problems.append("stores: must be a table")
        return StoreSettings()
    _unknown(raw, {"backend"}, "stores", problems)
    backend = raw.get("backend", "embedded")
    if backend not in ("embedded", "production"):
        problems.append(f"stores.backend: {backend!r} must be 'embedded' or 'production'")
        backend = "embedded"
    return StoreSettings(backend)


def _int(
    raw: dict[str, Any], key: str, default: int, lo: int, hi: int, where: str, problems: list[str]
) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        problems.append(f"{where}.{key}: {value!r} must be an integer from {lo} to {hi}")
        return default
    return value


def _unknown(raw: dict[str, Any], allowed: set[str], where: str, problems: list[str]) -> None:
    for key in sorted(set(raw) - allowed):
        prefix = f"{where}." if where else ""
        problems.append(f"{prefix}{key}: unknown key (allowed: {', '.join(sorted(allowed))})")
