"""``chatmesh chat``: a terminal chat client built on the generated Python SDK.

It is also the smallest complete example of using ``chatmesh_sdk``: a grpcio
channel with a bearer-token interceptor, the SDK stubs, and a Subscribe stream
resumed with ``resume_from`` after a reconnect.

Example:
    >>> # chatmesh chat alice --region us-east --with bob      (terminal 1)
    >>> # chatmesh chat bob --region eu                        (terminal 2)
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from chatmesh_sdk.chatmesh import v1 as sdk
from mesh.core.auth import KeyDirectory, mint

__all__ = ["BearerAuth", "run_chat"]


class _Details:
    """A ClientCallDetails with extra metadata (grpc's own type is not constructible)."""

    def __init__(
        self, base: grpc.ClientCallDetails, metadata: list[tuple[str, str | bytes]]
    ) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = metadata
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


if TYPE_CHECKING:  # generic in the stubs only
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.UnaryStreamClientInterceptor


class BearerAuth(_UnaryUnary, _UnaryStream):
    """Adds ``authorization: Bearer <token>`` to every call (the SDK stubs take no metadata)."""

    def __init__(self, token: Callable[[], str]) -> None:
        """Args: token returns the current token (so it can be refreshed)."""
        self._token = token

    def _details(self, details: grpc.ClientCallDetails) -> _Details:
        metadata = [*list(details.metadata or []), ("authorization", f"Bearer {self._token()}")]
        return _Details(details, metadata)

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        return continuation(self._details(client_call_details), request)


def _endpoints(state: dict[str, Any], region: str) -> tuple[str, str, str]:
    info = state["regions"][region]
    edge = info.get("edge") or {}
    if edge.get("grpc"):
        return edge["grpc"], edge["grpc"], edge["grpc"]
    grpc_eps = info["grpc"]
    return grpc_eps["command"], grpc_eps["query"], grpc_eps["notification"][0]


def _say(text: str) -> None:
    sys.stdout.write(f"\r{text}\n> ")
    sys.stdout.flush()


def _describe(event: sdk.Event, me: str) -> str | None:
    if event.message_created is not None and event.message_created.message is not None:
        m = event.message_created.message
        return f"[{m.seq}] {m.sender_user_id}@{m.origin_region}: {m.text}"
    if event.message_edited is not None and event.message_edited.message is not None:
        m = event.message_edited.message
        return f"[{m.seq}] {m.sender_user_id} edited: {m.text}"
    if event.message_deleted is not None:
        return f"[{event.message_deleted.message_seq}] (deleted)"
    if event.member_joined is not None:
        return f"* {event.member_joined.user_id} joined"
    if event.member_left is not None:
        return f"* {event.member_left.user_id} left"
    if event.channel_created is not None and event.channel_created.channel is not None:
        ch = event.channel_created.channel
        return f"* channel {ch.name!r} ({ch.channel_id}) with {', '.join(ch.member_user_ids)}"
    if event.typing_changed is not None and event.typing_changed.user_id != me:
        return (
            f"* {event.typing_changed.user_id} is typing…" if event.typing_changed.typing else None
        )
    if event.presence_changed is not None and event.presence_changed.presence is not None:
        p = event.presence_changed.presence
        status = "online" if p.status == sdk.PresenceStatus.ONLINE else "offline"
        return f"* {p.user_id} is {status}"
    return None


def run_chat(
    state: dict[str, Any],
    run_dir: Path,
    *,
    user: str,
    region: str | None,
    with_users: list[str],
    channel_id: str | None,
) -> int:
    """Runs the interactive client until /quit or end of input; returns an exit status."""
    region = region or state["primary"]
    if region not in state["regions"]:
        print(f"unknown region {region!r}; regions: {', '.join(state['regions'])}", file=sys.stderr)
        return 2
    keys = KeyDirectory(run_dir / "keys")
    token = mint(keys, user)
    auth = BearerAuth(lambda: token)
    cmd_addr, query_addr, notif_addr = _endpoints(state, region)
    channels = [
        grpc.intercept_channel(grpc.insecure_channel(a), auth)
        for a in (cmd_addr, query_addr, notif_addr)
    ]
    commands = sdk.CommandServiceStub(channels[0])
    queries = sdk.QueryServiceStub(channels[1])
    notifications = sdk.NotificationServiceStub(channels[2])
    try:
        if with_users:
            created = commands.create_channel(
                sdk.CreateChannelRequest(
                    name=", ".join([user, *with_users]), member_user_ids=with_users
                )
            )
            assert created.channel is not None
            channel_id = created.channel.channel_id
        if channel_id is None:
            print("waiting for a channel (ask someone to `chatmesh chat THEM --with YOU`)...")
            while channel_id is None:
                listed = queries.list_channels(sdk.ListChannelsRequest())
                if listed.channels and listed.channels[0].channel is not None:
                    channel_id = listed.channels[0].channel.channel_id
                else:
                    time.sleep(0.5)
        history = queries.get_history(sdk.GetHistoryRequest(channel_id=channel_id, limit=20))
        print(f"{user} in {region}, channel {channel_id} — type to send, /quit to leave")
        last_seq = 0
        for m in history.messages:
            print(
                f"[{m.seq}] {m.sender_user_id}@{m.origin_region}: {'(deleted)' if m.deleted else m.text}"
            )
            last_seq = max(last_seq, m.seq)
        last_seq = max(last_seq, history.last_seq)
        stop = threading.Event()
        resume = {channel_id: last_seq}

        def listen() -> None:
            while not stop.is_set():
                try:
                    stream: Iterator[sdk.SubscribeResponse] = notifications.subscribe(
                        sdk.SubscribeRequest(resume_from=dict(resume))
                    )
                    for item in stream:
                        if item.event is None:
                            continue
                        if item.event.channel_id == channel_id and item.event.seq:
                            resume[channel_id] = item.event.seq
                        line = _describe(item.event, user)
                        if line and (
                            not item.event.channel_id or item.event.channel_id == channel_id
                        ):
                            _say(line)
                except grpc.RpcError as exc:
                    if stop.is_set():
                        return
                    _say(f"(stream ended: {exc.code().name}; reconnecting)")
                    time.sleep(1)

        thread = threading.Thread(target=listen, daemon=True)
        thread.start()
        sys.stdout.write("> ")
        sys.stdout.flush()
        for line in sys.stdin:
            text = line.strip()
            if text in ("/quit", "/exit"):
                break
            if not text:
                continue
            try:
                commands.send_message(
                    sdk.SendMessageRequest(
                        channel_id=channel_id, text=text, client_msg_id=uuid.uuid4().hex
                    )
                )
            except grpc.RpcError as exc:
                _say(f"(not sent: {exc.code().name}: {exc.details()})")
        stop.set()
        return 0
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    finally:
        for ch in channels:
            ch.close()
