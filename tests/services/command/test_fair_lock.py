"""The channel lock serves users round-robin: one user's burst does not queue ahead of others.

Order of events only (no timing): who gets the lock, in which order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.command.service import FairLock
from tests.services.command.test_commands_unit import ORIGIN, Env, _channel, _send


async def _run(lock: FairLock, callers: list[str], order: list[str]) -> None:
    async def one(caller: str, n: int) -> None:
        async with lock.hold(caller):
            order.append(f"{caller}{n}")
            await asyncio.sleep(0)

    await asyncio.gather(*(one(c, i) for i, c in enumerate(callers)))


async def test_a_late_caller_waits_for_one_turn_of_each_queued_caller_not_their_backlog() -> None:
    order: list[str] = []
    await _run(FairLock(), ["hog"] * 6 + ["calm", "other", "calm"], order)
    # hog0 held it; then one turn each, round-robin; each caller's own calls in order.
    assert order == ["hog0", "hog1", "calm6", "other7", "hog2", "calm8", "hog3", "hog4", "hog5"]


async def test_a_cancelled_waiter_and_a_cancelled_grant_pass_the_lock_on() -> None:
    lock = FairLock()
    order: list[str] = []
    async with lock.hold("a"):
        waiting = asyncio.create_task(_run(lock, ["b"], order))
        later = asyncio.create_task(_run(lock, ["c"], order))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.sleep(0)
    await later
    assert order == ["c0"] and waiting.cancelled() and not lock.locked()

    # Granted, then cancelled before it ran: the next waiter still gets the lock.
    async with lock.hold("a"):
        granted = asyncio.create_task(_run(lock, ["b"], order))
        after = asyncio.create_task(_run(lock, ["c"], order))
        await asyncio.sleep(0)
    granted.cancel()  # the release above handed it to b; b has not run yet
    await after
    assert order == ["c0", "c0"] and granted.cancelled() and not lock.locked()


async def test_a_flooders_admitted_burst_does_not_delay_another_members_send(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path)
    try:
        commands = await env.commands()
        ch = await _channel(commands, "r1", members=("bob",))
        flood = [
            asyncio.create_task(commands.send_message("alice", _send(ch, f"f{i}"), ORIGIN))
            for i in range(30)
        ]
        await asyncio.sleep(0)  # the burst is queued on the channel's lock first
        calm = await commands.send_message("bob", _send(ch, "calm", "calm"), ORIGIN)
        # bob's message was written after at most a couple of alice's, not after all 30.
        assert calm.message.seq <= 4
        await asyncio.gather(*flood)
        # Every send is in EVENTS once, in seq order; alice's in the order she sent them.
        assert [seq for seq, _ in env.stream(ch)] == list(range(1, 33))
        assert [t for t in env.texts(ch) if t != "calm"] == ["hi"] * 30
        assert [f.result().message.seq for f in flood] == sorted(
            f.result().message.seq for f in flood
        )
    finally:
        for close in env.closers:
            await close()
        await env.bus.close()
