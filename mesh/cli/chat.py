"""``chatmesh chat``: a terminal chat client built on :mod:`mesh.client`.

It is also the smallest complete example of an application on the client layer:
one :class:`~mesh.client.ChatClient` per regional edge (from the harness state,
TLS when the edge says so or ``--ca-file`` is given), a refreshable token, the
channel's recent history, then a :class:`~mesh.client.Subscription` resumed from
the history's last seq, which reconnects by itself; sends are retried with one
``client_msg_id`` each, and refusals arrive as typed errors.

In the every-region write mode (ADR-026: messages carry an ``hlc`` and events an
``origin_seq``, seq 0) the channel is shown in ``(hlc, origin_region,
message_id)`` order by :class:`~mesh.cli.ordered.OrderedChannel`: a message that
arrives late is printed with a line saying where it belongs, and ``/view``
reprints the channel in order. The primary mode prints as it always did.

Example:
    >>> # chatmesh chat alice --region us-east --with bob      (terminal 1)
    >>> # chatmesh chat bob --region eu                        (terminal 2)
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from chatmesh.v1 import events_pb2, presence_pb2
from mesh.cli.ordered import OrderedChannel, is_ordered_event
from mesh.client import ChatClient, Subscription
from mesh.core.auth import KeyDirectory, mint
from mesh.core.errors import ChatmeshError

__all__ = ["describe", "run_chat"]

_TOKEN_REFRESH_S = 3600.0
"""Mint a new token after this long (tokens live 24 h)."""


def _token_provider(keys: KeyDirectory, user: str) -> Callable[[], str]:
    """A provider that mints ``user``'s token and renews it every hour."""
    token, minted = "", 0.0

    def provide() -> str:
        nonlocal token, minted
        if not token or time.monotonic() - minted > _TOKEN_REFRESH_S:
            token, minted = mint(keys, user), time.monotonic()
        return token

    return provide


def describe(event: events_pb2.Event, me: str) -> str | None:
    """One terminal line for an event (None: nothing worth showing)."""
    kind = event.WhichOneof("payload")
    if kind == "message_created":
        m = event.message_created.message
        if m.deleted:  # a replayed message that was deleted since: its tombstone
            return f"[{m.seq}] {m.sender_user_id}@{m.origin_region}: (deleted)"
        return f"[{m.seq}] {m.sender_user_id}@{m.origin_region}: {m.text}"
    if kind == "message_edited":
        m = event.message_edited.message
        if m.deleted:
            return None  # the deletion follows; the tombstone says it all
        return f"[{m.seq}] {m.sender_user_id} edited: {m.text}"
    if kind == "message_deleted":
        return f"[{event.message_deleted.message_seq}] (deleted)"
    if kind == "member_joined":
        return f"* {event.member_joined.user_id} joined"
    if kind == "member_left":
        return f"* {event.member_left.user_id} left"
    if kind == "channel_created":
        ch = event.channel_created.channel
        return f"* channel {ch.name!r} ({ch.channel_id}) with {', '.join(ch.member_user_ids)}"
    if kind == "typing_changed" and event.typing_changed.user_id != me:
        return (
            f"* {event.typing_changed.user_id} is typing…" if event.typing_changed.typing else None
        )
    if kind == "presence_changed":
        p = event.presence_changed.presence
        status = "online" if p.status == presence_pb2.PRESENCE_STATUS_ONLINE else "offline"
        return f"* {p.user_id} is {status}"
    return None


class _Terminal:
    """Lines from stdin (read by a daemon thread, so a pending read never blocks exit)."""

    def __init__(self, stdin: TextIO, stdout: TextIO) -> None:
        self.stdout = stdout
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def read() -> None:
            for line in stdin:
                loop.call_soon_threadsafe(self._lines.put_nowait, line)
            loop.call_soon_threadsafe(self._lines.put_nowait, None)

        threading.Thread(target=read, name="chat-stdin", daemon=True).start()

    async def line(self) -> str | None:
        """The next input line, None at end of input."""
        return await self._lines.get()

    def say(self, text: str) -> None:
        """Prints a line above the prompt."""
        self.stdout.write(f"\r{text}\n> ")
        self.stdout.flush()


async def _listen(
    subscription: Subscription,
    term: _Terminal,
    me: str,
    channel_id: str,
    ordered: OrderedChannel,
) -> None:
    shown_reconnects = 0
    try:
        async for item in subscription.responses():
            kind = item.WhichOneof("kind")
            if kind == "replay_complete" and subscription.reconnects > shown_reconnects:
                shown_reconnects = subscription.reconnects
                origins = subscription.positions.origins(channel_id)
                at = (
                    ", ".join(f"{o} {n}" for o, n in sorted(origins.items()))
                    if origins
                    else f"seq {subscription.positions.get(channel_id)}"
                )
                term.say(f"(reconnected; resumed from {at})")
            elif kind == "event" and item.event.channel_id in ("", channel_id):
                if is_ordered_event(item.event):
                    for shown in ordered.apply(item.event):
                        term.say(shown)
                    continue
                line = describe(item.event, me)
                if line:
                    term.say(line)
    except ChatmeshError as exc:
        term.say(f"(stream ended: {exc.code} {exc.reason}: {exc.message})")


async def _chat(
    edge: dict[str, Any],
    keys: KeyDirectory,
    *,
    user: str,
    region: str,
    with_users: list[str],
    channel_id: str | None,
    stdin: TextIO,
    stdout: TextIO,
) -> int:
    term = _Terminal(stdin, stdout)

    def out(text: str) -> None:
        stdout.write(text + "\n")
        stdout.flush()

    async with ChatClient.from_edge(edge, token=_token_provider(keys, user)) as client:
        if with_users:
            created = await client.create_channel(", ".join([user, *with_users]), with_users)
            channel_id = created.channel.channel_id
        if channel_id is None:
            out("waiting for a channel (ask someone to `chatmesh chat THEM --with YOU`)...")
            while channel_id is None:
                listed = await client.list_channels()
                if listed.channels:
                    channel_id = listed.channels[0].channel.channel_id
                else:
                    await asyncio.sleep(0.5)
        history = await client.get_history(channel_id, limit=20)
        out(f"{user} in {region}, channel {channel_id} — type to send, /quit to leave")
        ordered = OrderedChannel()
        ordered.add_history([m for m in history.messages if m.hlc > 0])
        for shown in ordered.render():
            out(shown)
        for m in history.messages:
            if m.hlc > 0:
                continue  # every-region mode: shown in order above
            text = "(deleted)" if m.deleted else m.text
            out(f"[{m.seq}] {m.sender_user_id}@{m.origin_region}: {text}")
        if history.last_origin_seqs:  # every-region mode: positions per origin region
            positions = {channel_id: dict(history.last_origin_seqs)}
            subscription = client.subscribe(resume_from_origins=positions)
        else:
            last_seq = max([history.last_seq, *(m.seq for m in history.messages)])
            subscription = client.subscribe({channel_id: last_seq})
        listener = asyncio.create_task(_listen(subscription, term, user, channel_id, ordered))
        stdout.write("> ")
        stdout.flush()
        while (line := await term.line()) is not None:
            text = line.strip()
            if text in ("/quit", "/exit"):
                break
            if not text:
                continue
            if text == "/view" and len(ordered) > 0:  # every-region mode only
                for shown in ordered.render():
                    term.say(shown)
                continue
            try:
                await client.send_message(channel_id, text)
            except ChatmeshError as exc:
                term.say(f"(not sent: {exc.code} {exc.reason}: {exc.message})")
        await subscription.close()
        await listener
    return 0


def run_chat(
    state: dict[str, Any],
    run_dir: Path,
    *,
    user: str,
    region: str | None,
    with_users: list[str],
    channel_id: str | None,
    ca_file: Path | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Runs the interactive client until /quit or end of input; returns an exit status.

    Args:
        state: The harness state (``chatmesh status --json``).
        run_dir: The mesh's run directory (its ``keys/`` mint the token).
        user: Who chats.
        region: Whose edge to use (default: the primary).
        with_users: Create a channel with these users first.
        channel_id: Talk in this channel (default: the newest, or the one created).
        ca_file: PEM of the CA to trust; implies TLS to the edge.
        stdin: Input lines (default ``sys.stdin``).
        stdout: Output (default ``sys.stdout``).
    """
    region = region or state["primary"]
    if region not in state["regions"]:
        print(f"unknown region {region!r}; regions: {', '.join(state['regions'])}", file=sys.stderr)
        return 2
    edge = state["regions"][region].get("edge")
    if not edge or not edge.get("grpc"):
        print(f"region {region!r} has no edge in this mesh's state", file=sys.stderr)
        return 2
    edge = dict(edge)
    if ca_file is not None:
        edge.update(tls=True, ca_file=str(ca_file))
    try:
        return asyncio.run(
            _chat(
                edge,
                KeyDirectory(run_dir / "keys"),
                user=user,
                region=region,
                with_users=with_users,
                channel_id=channel_id,
                stdin=stdin or sys.stdin,
                stdout=stdout or sys.stdout,
            )
        )
    except ChatmeshError as exc:
        print(f"error: {exc.code} {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
