"""What a chaos run recorded: plain data, no I/O beyond JSON, so the checker is pure.

Every time is in seconds since the run's start (``time.monotonic()`` minus
:attr:`Recording.t0`). A run writes one ``recording.json``; ``python -m tools.chaos
check FILE`` re-checks it without a mesh, and the checker's unit tests build
recordings by hand.

The workload marks every message it sends with its idempotency key in the text
(:func:`message_text` / :func:`key_of`): other users never see a sender's
``client_msg_id``, so the key in the text is how a history row or a received event
is matched to the send that produced it, and how two stored copies of one
logical send are told apart from two sends.

Example:
    >>> key_of(message_text("ada", 7, "k1"))
    'k1'
    >>> key_of("hello") is None
    True
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "HistoryRow",
    "Notice",
    "RawEvent",
    "Receipt",
    "Recording",
    "Send",
    "StreamEnd",
    "SubscriberLog",
    "Window",
    "key_of",
    "message_text",
]

_KEY = re.compile(r"\bkey=([0-9a-z]+)\b")


def message_text(sender: str, n: int, key: str) -> str:
    """The text of the ``n``-th message of ``sender`` sent with idempotency key ``key``."""
    return f"chaos {sender} #{n} key={key}"


def key_of(text: str) -> str | None:
    """The idempotency key a workload message carries in its text, None for other texts."""
    match = _KEY.search(text)
    return match.group(1) if match else None


@dataclass
class Send:
    """One logical send (all its retries share ``key``)."""

    sender: str
    region: str
    """Region whose edge the sender uses."""
    channel: str
    key: str
    """The ``client_msg_id``, also in the text."""
    issued: float
    """When the first attempt started."""
    done: float | None = None
    """When the client returned (acknowledged or gave up); None: still in flight at the end."""
    ok: bool = False
    """Acknowledged by the Command Service."""
    message_id: str = ""
    seq: int = 0
    duplicate: bool = False
    """The service answered from its idempotency record (a retry of a committed send)."""
    error: str = ""
    """``CODE REASON: message`` of the last attempt when the client gave up."""


@dataclass
class RawEvent:
    """A channel event as the server sent it (before the client's de-duplication)."""

    channel: str
    seq: int
    message_id: str
    key: str | None
    t: float
    conn: int
    """Which Subscribe call (0, 1, ...) of the subscriber carried it."""
    replay: bool
    """Sent before that call's ``replay_complete`` (a replay, not a live delivery)."""


@dataclass
class Receipt:
    """A channel event as the client handed it to the application."""

    channel: str
    seq: int
    message_id: str
    key: str | None
    t: float


@dataclass
class Notice:
    """An explicit "could not deliver" signal from the server or the client.

    Today nothing sends one; issue 12 adds it. Any stream item that is not an event,
    heartbeat or ``replay_complete`` is recorded as one, and so is a stream ending
    whose error names channels. ``channels`` maps each named channel to the seq
    range ``[first, last]`` it says was not delivered (None: unknown range, the
    whole channel is covered).
    """

    t: float
    conn: int
    kind: str
    channels: dict[str, list[int] | None] = field(default_factory=dict)
    detail: str = ""


@dataclass
class StreamEnd:
    """How one Subscribe call ended."""

    t: float
    conn: int
    code: str
    """gRPC status code name; ``CANCELLED`` when the client closed it; ``OK`` for a clean end."""
    reason: str = ""
    detail: str = ""


@dataclass
class SubscriberLog:
    """Everything one subscriber saw."""

    user: str
    region: str
    start: dict[str, int]
    """Channel -> the seq it subscribed after (everything later is expected)."""
    raw: list[RawEvent] = field(default_factory=list)
    delivered: list[Receipt] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    ends: list[StreamEnd] = field(default_factory=list)
    connections: int = 0
    """Subscribe calls opened."""
    resubscribes: int = 0
    """Times the Subscription itself gave up (retry budget spent) and the workload opened a new one."""
    client_duplicates: int = 0
    """Events the client dropped as at or below their channel's position."""
    client_gaps: int = 0
    """Events the client saw beyond their channel's next seq."""


@dataclass
class Window:
    """One step of the schedule: the fault, then traffic until the next step starts."""

    index: int
    name: str
    action: str
    start: float
    """When the fault was injected."""
    end: float
    """When the fault was over: the link healed, the process serving again (whoever restarted it)."""
    until: float = 0.0
    """When the next window starts (the end of this one's recovery)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """What happened: who restarted a process and after how long, settle time, errors."""
    recover_from: float | None = None
    """From when time to recover counts: the heal for a link fault; the moment the process
    was gone for a kill or a restart (bringing it back is part of recovering). None: ``end``."""


@dataclass
class HistoryRow:
    """One message of a region's final history."""

    seq: int
    message_id: str
    key: str | None


@dataclass
class Recording:
    """A whole run."""

    topology: str
    regions: list[str]
    primary: str
    channels: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    started_at: str = ""
    """Wall-clock start (ISO 8601)."""
    t0: float = 0.0
    """``time.monotonic()`` at the start; every other time is relative to it."""
    windows: list[Window] = field(default_factory=list)
    sends: list[Send] = field(default_factory=list)
    subscribers: list[SubscriberLog] = field(default_factory=list)
    histories: dict[str, dict[str, list[HistoryRow]]] = field(default_factory=dict)
    """Region -> channel -> its final history, ascending by seq."""
    traffic_end: float = 0.0
    """When the senders stopped issuing."""
    settle: dict[str, Any] = field(default_factory=dict)
    """How the final wait went (seconds, whether histories and streams went quiet)."""
    mirrors: list[list[Any]] = field(default_factory=list)
    """Once a second: ``[t, region, EVENTS last_seq, the region's mirror last_seq, error]``
    (-1 where unknown; :mod:`tools.chaos.replication`)."""
    skipped_ticks: int = 0
    """Sends not issued because a sender had too many in flight (the open loop's cap)."""

    # -- JSON ----------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The recording as JSON-ready data."""
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        """Writes the recording to ``path``."""
        path.write_text(json.dumps(self.to_json(), separators=(",", ":")))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recording:
        """Reads what :meth:`to_json` wrote."""
        data = dict(data)
        data["windows"] = [Window(**w) for w in data.get("windows", [])]
        data["sends"] = [Send(**s) for s in data.get("sends", [])]
        data["subscribers"] = [_subscriber(s) for s in data.get("subscribers", [])]
        data["histories"] = {
            region: {ch: [HistoryRow(**r) for r in rows] for ch, rows in channels.items()}
            for region, channels in data.get("histories", {}).items()
        }
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> Recording:
        """Reads a recording written by :meth:`save`."""
        return cls.from_json(json.loads(path.read_text()))


def _subscriber(data: dict[str, Any]) -> SubscriberLog:
    data = dict(data)
    data["raw"] = [RawEvent(**e) for e in data.get("raw", [])]
    data["delivered"] = [Receipt(**e) for e in data.get("delivered", [])]
    data["notices"] = [Notice(**n) for n in data.get("notices", [])]
    data["ends"] = [StreamEnd(**e) for e in data.get("ends", [])]
    return SubscriberLog(**data)
