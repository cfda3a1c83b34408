"""mesh.core.pauses: collections and a held event loop show up in the probe's summary."""

from __future__ import annotations

import asyncio
import gc
import time

from mesh.core.pauses import PauseProbe, tune_gc


async def test_a_collection_is_counted_by_generation_and_reported_once() -> None:
    seen: list[int] = []
    probe = PauseProbe(on_gc=lambda gen, _seconds: seen.append(gen))
    probe.start()
    try:
        gc.collect(2)
        first = probe.take()
        second = probe.take()
    finally:
        probe.stop()
    assert first["gc"]["gen2"]["count"] >= 1
    assert 2 in seen
    assert second["gc"]["gen2"]["count"] == 0  # take() starts a new summary


async def test_a_blocked_loop_shows_as_lag() -> None:
    probe = PauseProbe(interval=0.01)
    probe.start()
    try:
        await asyncio.sleep(0.03)
        time.sleep(0.08)  # noqa: ASYNC251 - holds the loop, as a long callback or a collection would
        await asyncio.sleep(0.03)
        summary = probe.take()
    finally:
        probe.stop()
    assert summary["lag"]["max_ms"] >= 50


async def test_stop_unregisters_the_callback() -> None:
    probe = PauseProbe()
    probe.start()
    probe.stop()
    gc.collect()
    assert probe.take()["gc"]["gen2"]["count"] == 0


def test_tune_gc_raises_the_young_threshold_and_keeps_collecting() -> None:
    before = gc.get_threshold()
    try:
        tune_gc(12_345)
        assert gc.get_threshold()[0] == 12_345
        assert gc.isenabled()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
