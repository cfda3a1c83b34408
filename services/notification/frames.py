"""Encode once: one ``SubscribeResponse`` and one serialization per event, shared by every stream.

A delivery names every user of this instance who should see the event; each
of their streams queues the *same* response object (one per visibility variant:
:meth:`~services.notification.hub.Hub.visible` hands the sender's streams the
event with its ``client_msg_id`` and everyone else a stripped copy, a distinct
object), and the stream's response serializer (:meth:`Frames.encode`) turns it
into bytes once, for the first stream that writes it. The bytes are those
``SubscribeResponse.SerializeToString`` produces, so the wire is unchanged.

Both caches are keyed by object identity and keep a strong reference to the
key, so an id cannot be reused while its entry lives; they are bounded (oldest
out first). A response that is no longer cached (a stream far behind) is
simply serialized again: the cache saves work, it never decides what is sent.

Example:
    >>> from chatmesh.v1 import events_pb2
    >>> frames = Frames(size=8)
    >>> event = events_pb2.Event(channel_id="ch_1", seq=3)
    >>> a, b = frames.response(event), frames.response(event)
    >>> a is b, frames.encode(a) is frames.encode(b)
    (True, True)
"""

from __future__ import annotations

from chatmesh.v1 import events_pb2, notification_service_pb2 as pb

__all__ = ["Frames"]


class Frames:
    """Bounded identity caches: event -> shared response, shared response -> bytes."""

    def __init__(self, size: int = 4096) -> None:
        """Args: size bounds each cache (entries; the oldest is dropped first)."""
        self.size = size
        self._responses: dict[int, tuple[events_pb2.Event, pb.SubscribeResponse]] = {}
        self._bytes: dict[int, tuple[pb.SubscribeResponse, bytes | None]] = {}

    def response(self, event: events_pb2.Event) -> pb.SubscribeResponse:
        """The one ``SubscribeResponse`` carrying ``event`` (built on first use)."""
        hit = self._responses.get(id(event))
        if hit is not None and hit[0] is event:
            return hit[1]
        response = pb.SubscribeResponse(event=event)
        self._responses[id(event)] = (event, response)
        self._bytes[id(response)] = (response, None)
        for cache in (self._responses, self._bytes):
            if len(cache) > self.size:
                del cache[next(iter(cache))]
        return response

    def encode(self, response: pb.SubscribeResponse | bytes) -> bytes:
        """The wire bytes of ``response``: the Subscribe method's response serializer.

        A response from :meth:`response` is serialized once while it is cached;
        any other (replay items, heartbeats: one stream's own) is serialized
        without being cached; bytes pass through.
        """
        if type(response) is bytes:
            return response
        assert isinstance(response, pb.SubscribeResponse)
        key = id(response)
        hit = self._bytes.get(key)
        if hit is None or hit[0] is not response:
            return response.SerializeToString()
        data = hit[1]
        if data is None:
            data = response.SerializeToString()
            self._bytes[key] = (response, data)
        return data
