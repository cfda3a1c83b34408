"""The worker's projection in the every-region write mode (ADR-026), nothing started.

``ALL_<REGION>`` interleaves every region's events; the projector applies them
to the region's real SQLite history and metadata, whatever their order, once.
"""

from __future__ import annotations

from pathlib import Path

from mesh.bus.interfaces import StreamMsg
from mesh.stores import open_history, open_metadata
from services.worker.service import Projector
from tests.stores.origin_events import Origin


async def test_remote_events_reach_history_and_metadata_once(tmp_path: Path) -> None:
    history = await open_history(f"sqlite:///{tmp_path}/history.db")
    metadata = await open_metadata(f"sqlite:///{tmp_path}/metadata.db")
    try:
        projector = Projector(history, metadata)
        eu, asia = Origin("eu", "ch_w"), Origin("asia", "ch_w")
        events = [
            asia.join(30, "bob", {"eu": 1}),  # arrives before the channel it joins
            eu.create_channel(10, ["alice"], public=True),
            eu.send(20, "msg_w1", "hi", "alice"),
            asia.send(40, "msg_w2", "hello", "bob"),
        ]
        msgs = [
            StreamMsg(e.SerializeToString(), n, "chatmesh.evt.x") for n, e in enumerate(events, 1)
        ]
        await projector.handle([*msgs[:2], StreamMsg(b"\xff not an event", 3, "x")])
        await projector.handle(msgs)  # redelivered, with the rest
        assert projector.applied == 4
        page = await history.ordered_history("ch_w")
        assert [m.message_id for m in page.messages] == ["msg_w1", "msg_w2"]
        assert await history.last_origin_seqs("ch_w") == {"eu": 2, "asia": 2}
        assert await metadata.members("ch_w") == (["alice", "bob"], 0)
        record = await metadata.known_message("msg_w2")
        assert record is not None and (record.sender_user_id, record.deleted) == ("bob", False)
        assert await history.applied_stream_seq() == 4
    finally:
        await history.close()
        await metadata.close()
