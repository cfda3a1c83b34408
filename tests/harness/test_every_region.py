"""The every-region write mode's infrastructure (ADR-026), on real servers.

One ``three-regions-autonomous`` mesh with every service and each region's edge,
started once for the module through the same harness ``chatmesh up`` uses. The
events here are published straight into the streams with the region's Command
Service credentials (the services' every-region logic is built separately): what
is checked is the write path's plumbing — streams, placement, sources across the
gateways, a cut and its heal, and who may write where.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from mesh.bus.connection import connect
from mesh.bus.subjects import (
    EVENTS_STREAM,
    WRITES_EVERY_REGION,
    Subjects,
    all_stream_name,
    origin_stream_name,
)
from mesh.harness.edges import edges_hook
from mesh.harness.services import services_hook
from mesh.harness.supervisor import Mesh
from mesh.topology import load
from tests.conftest import TEST_SETTINGS, assert_no_unexpected_crashes
from tests.helpers import eventually

pytestmark = [pytest.mark.services, pytest.mark.slow]

REGIONS = ("us-east", "eu", "asia")


@pytest.fixture(scope="module")
async def mesh(run_root: Path) -> AsyncIterator[Mesh]:
    """three-regions-autonomous with every service and edge."""
    async with Mesh(
        load("three-regions-autonomous"),
        run_root / "autonomous",
        hooks=[services_hook(TEST_SETTINGS), edges_hook()],
    ) as running:
        yield running
        for link in running.topology.links:
            await running.wan.heal(link.a, link.b)
        assert_no_unexpected_crashes(running)


async def _writer(mesh: Mesh, region: str, errors: list[str] | None = None) -> NATS:
    """A client with ``region``'s Command Service credentials, in ``region``."""
    creds = mesh.credentials[f"command-{region}"]

    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(str(exc))

    nc = await connect(mesh.nats_urls(region), name=f"test-command-{region}", user=creds.user,
                       password=creds.password, error_cb=on_error)  # fmt: skip
    mesh.on_stop(nc.close)
    return nc


async def _publish(nc: NATS, region: str, channel: str, msg_id: str) -> int:
    ack = await nc.jetstream().publish(
        Subjects.origin_channel_events(region, channel),
        msg_id.encode(),
        timeout=10,
        stream=origin_stream_name(region),
        headers={"Nats-Msg-Id": msg_id},
    )
    return ack.seq


async def _contents(client: NATS, stream: str) -> list[tuple[str, int, str]]:
    """(origin stream, origin seq, Nats-Msg-Id) of every message of ``stream``, in order.

    Read with direct gets, which the stream's own servers answer: they work on the
    cut-off side too, where the JetStream meta group has no quorum.
    """
    js = client.jetstream()
    found = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq, direct=True)
        except NotFoundError:
            return found
        headers = msg.headers or {}
        # Nats-Stream-Source: "<origin>:<hash> <origin seq> <filter> <transform> <subject>"
        origin, origin_seq = headers["Nats-Stream-Source"].split()[:2]
        found.append((origin.split(":", 1)[0], int(origin_seq), headers.get("Nats-Msg-Id", "")))
        seq += 1


async def _last_seq(admin: NATS, stream: str) -> int:
    return (await admin.jetstream().stream_info(stream)).state.last_seq


async def test_every_region_runs_its_own_write_path_and_streams(mesh: Mesh) -> None:
    admin = await mesh.nats_client("us-east", user="admin")
    jsm = admin.jsm()
    with pytest.raises(NotFoundError):
        await jsm.stream_info(EVENTS_STREAM)
    origins = {origin_stream_name(r) for r in REGIONS}
    async with httpx.AsyncClient(timeout=5) as http:
        for region in REGIONS:
            own = await jsm.stream_info(origin_stream_name(region))
            assert own.cluster is not None and own.cluster.name == region
            assert own.config.subjects == [Subjects.origin_events_all(region)]
            assert own.config.duplicate_window == 600  # the topology's 10m, as EVENTS has it
            aggregate = await jsm.stream_info(all_stream_name(region))
            assert aggregate.cluster is not None and aggregate.cluster.name == region
            assert {s.name for s in aggregate.config.sources or []} == origins
            assert not aggregate.config.subjects

            # Every service of the region runs, told the mode and the stream it reads.
            for kind in ("command", "fanout", "worker", "query", "notification"):
                config = mesh.services[
                    f"{kind}-{region}" + ("-1" if kind == "notification" else "")
                ].config
                assert config["writes"] == WRITES_EVERY_REGION, kind
            assert mesh.services[f"command-{region}"].config["events_stream"] == own.config.name
            # Presence stays in the region: its own Valkey, a primary replicating nothing,
            # written by its notification instances and read by its Query Service.
            valkey = mesh.valkey[region]
            info = await valkey.replication_info()
            assert info["role"] == "master" and info["connected_slaves"] == "0", info
            notification = mesh.services[f"notification-{region}-1"].config
            assert notification["valkey_primary"] == valkey.url
            assert mesh.services[f"query-{region}"].config["valkey_replica"] == valkey.url
            assert mesh.services[f"query-{region}"].config["nats_user"] == f"query-{region}"
            for kind in ("fanout", "worker", "notification"):
                name = f"{kind}-{region}" + ("-1" if kind == "notification" else "")
                assert mesh.services[name].config["stream"] == all_stream_name(region), kind

            # The region's edge sends commands to the region's own Command Service.
            command = mesh.services[f"command-{region}"].address
            assert mesh.endpoints[region]["grpc"]["command"] == command
            clusters = (await http.get(f"{mesh.endpoints[region]['edge']['admin']}/clusters",
                                       params={"format": "json"})).json()  # fmt: skip
            hosts = {
                c["name"]: [
                    f"{h['address']['socket_address']['address']}:"
                    f"{h['address']['socket_address']['port_value']}"
                    for h in c.get("host_statuses", [])
                ]
                for c in clusters["cluster_statuses"]
            }
            assert hosts[f"command-{region}"] == [command]
            assert "command-primary" not in hosts


async def test_an_event_written_in_asia_reaches_every_region(mesh: Mesh) -> None:
    writer = await _writer(mesh, "asia")
    seq = await _publish(writer, "asia", "ch_asia_reach", "asia-reach-1")
    for region in REGIONS:
        stream = all_stream_name(region)
        reader = await mesh.nats_client(region, user="admin")

        async def arrived(stream: str = stream, reader: NATS = reader) -> bool:
            return ("EVENTS_ASIA", seq, "asia-reach-1") in await _contents(reader, stream)

        await eventually(arrived, timeout=30, what=f"asia's event in {stream}")


async def test_one_message_id_written_in_two_regions_is_kept_twice_in_every_region(
    mesh: Mesh,
) -> None:
    """A client retrying through another region: every ALL_ keeps both copies (ADR-026 picks one).

    nats-server de-duplicates sourced messages by Nats-Msg-Id; ALL_'s window is the
    shortest it allows (100 ms), so copies written further apart both arrive.
    """
    writers = {r: await _writer(mesh, r) for r in ("eu", "asia")}
    seqs = {"eu": await _publish(writers["eu"], "eu", "ch_eu_retry", "same-message-id")}
    await asyncio.sleep(0.5)  # the retry comes later (> the 100 ms window)
    seqs["asia"] = await _publish(writers["asia"], "asia", "ch_eu_retry", "same-message-id")
    expected = {(origin_stream_name(r), seq, "same-message-id") for r, seq in seqs.items()}
    for region in REGIONS:
        reader = await mesh.nats_client(region, user="admin")

        async def both(region: str = region, reader: NATS = reader) -> bool:
            return expected <= set(await _contents(reader, all_stream_name(region)))

        await eventually(both, timeout=30, what=f"both copies in {all_stream_name(region)}")


async def test_a_region_cut_off_keeps_writing_and_every_region_converges_after(
    mesh: Mesh,
) -> None:
    """asia is cut from both others while eu and asia keep writing, through the heal."""
    # Each stream is read in its own region (loopback direct gets: quick, and they
    # work on the cut-off side, where JetStream's meta group has no quorum).
    readers = {r: await mesh.nats_client(r, user="admin") for r in REGIONS}
    writers = {r: await _writer(mesh, r) for r in ("eu", "asia")}
    acked: dict[str, list[int]] = {"eu": [], "asia": []}
    stop = asyncio.Event()

    async def write(region: str) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            seq = await _publish(writers[region], region, f"ch_{region}_cut", f"{region}-cut-{i}")
            acked[region].append(seq)
            await asyncio.sleep(0.1)  # ~10 writes/s per region: load, not a flood

    async def held(writer: str, region: str) -> set[int]:
        origin = origin_stream_name(writer)
        found = await _contents(readers[region], all_stream_name(region))
        return {s for o, s, _ in found if o == origin}

    async def has_all_acked(writer: str, region: str) -> bool:
        return set(acked[writer]) <= await held(writer, region)

    tasks = [asyncio.create_task(write(r)) for r in writers]
    try:
        await eventually(lambda: all(len(a) >= 5 for a in acked.values()), what="writes flow")
        for other in ("us-east", "eu"):
            await mesh.wan.cut("asia", other)
        try:
            cut_at = {r: len(acked[r]) for r in acked}
            # Both sides keep writing into their own streams while cut off ...
            await eventually(
                lambda: all(len(acked[r]) >= cut_at[r] + 80 for r in acked),
                timeout=30, what="writes during the cut",
            )  # fmt: skip
            # ... and each region's ALL_ gets its own region's writes at once.
            await eventually(lambda: has_all_acked("eu", "eu"), timeout=10,
                             what="eu's writes in ALL_EU during the cut")  # fmt: skip
            await eventually(lambda: has_all_acked("asia", "asia"), timeout=10,
                             what="asia's writes in ALL_ASIA during the cut")  # fmt: skip
            assert max(acked["eu"]) not in await held("eu", "asia"), "eu reached asia while cut"
        finally:
            for other in ("us-east", "eu"):
                await mesh.wan.heal("asia", other)
        # Load stays on while the sources resume.
        healed_at = {r: len(acked[r]) for r in acked}
        await eventually(
            lambda: all(len(acked[r]) >= healed_at[r] + 20 for r in acked),
            timeout=30, what="writes after the heal",
        )  # fmt: skip
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    last = {r: await _last_seq(readers[r], origin_stream_name(r)) for r in writers}
    for region, seqs in acked.items():
        # Each acknowledged write has its own place in its origin's stream.
        assert len(set(seqs)) == len(seqs) and max(seqs) == last[region], region

    async def converged(region: str) -> bool:
        counts = {w: len(await held(w, region)) for w in writers}
        return all(counts[w] >= last[w] for w in writers)

    for region in REGIONS:
        try:
            await eventually(lambda r=region: converged(r), timeout=120, interval=0.5,  # type: ignore[misc]
                             what=f"{all_stream_name(region)} caught up")  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; {await _lag_report(readers[region], region, last)}"
            ) from None
        contents = await _contents(readers[region], all_stream_name(region))
        for writer in writers:
            origin = origin_stream_name(writer)
            # Every acknowledged write exactly once, in its origin's order, ids intact.
            got = [(s, m) for o, s, m in contents if o == origin]
            assert [s for s, _ in got] == list(range(1, last[writer] + 1)), (region, origin)
            assert len({m for _, m in got}) == last[writer], (region, origin)
            assert set(acked[writer]) <= {s for s, _ in got}, (region, origin)
    # The sources were kept moving by the workers' source monitors, not waited out.
    print(f"\nsource resets after the heal: {await _resets(mesh)}")


async def _lag_report(reader: NATS, region: str, last: dict[str, int]) -> str:
    """What ``region``'s aggregate holds of each writer and what its source info says."""
    contents = await _contents(reader, all_stream_name(region))
    parts = []
    for writer, last_seq in last.items():
        origin = origin_stream_name(writer)
        have = {s for o, s, _ in contents if o == origin}
        missing = sorted(set(range(1, last_seq + 1)) - have)
        parts.append(f"{origin}: holds {len(have)} of {last_seq}, missing {missing[:5]}"
                     f"{'...' if len(missing) > 5 else ''} ({len(missing)})")  # fmt: skip
    info = await reader.jetstream().stream_info(all_stream_name(region))
    sources = [(s.name, s.lag, s.active, s.error) for s in info.sources or []]
    return "; ".join(parts) + f"; source info {sources}"


async def _resets(mesh: Mesh) -> dict[str, int]:
    """chatmesh_source_resets_total per worker, from its metrics endpoint."""
    found: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=5) as http:
        for region in REGIONS:
            url = mesh.services[f"worker-{region}"].metrics
            if not url:
                continue
            text = (await http.get(url)).text
            found[region] = sum(
                int(float(line.rsplit(" ", 1)[1]))
                for line in text.splitlines()
                if line.startswith("chatmesh_source_resets_total{") and 'result="reset"' in line
            )
    return found


async def test_a_region_command_user_writes_only_its_own_region(mesh: Mesh) -> None:
    admin = await mesh.nats_client("eu", user="admin")
    errors: list[str] = []
    eu = await _writer(mesh, "eu", errors)
    asia_before = await _last_seq(admin, "EVENTS_ASIA")
    # Its own region's subject: stored.
    assert await _publish(eu, "eu", "ch_eu_perm", "eu-perm-1") >= 1
    # Another region's: refused by the server, never stored.
    with pytest.raises(nats.errors.TimeoutError):
        await eu.jetstream().publish(Subjects.origin_channel_events("asia", "ch_eu_perm"), b"x",
                                     timeout=2, headers={"Nats-Msg-Id": "eu-as-asia"})  # fmt: skip
    await eventually(
        lambda: any('publish to "chatmesh.evt.asia.ch.ch_eu_perm"' in e.lower() for e in errors),
        timeout=5, what="the publish refused",
    )  # fmt: skip
    assert await _last_seq(admin, "EVENTS_ASIA") == asia_before
    # Nor may it write the primary mode's subjects, or read another region's stream.
    errors.clear()
    with pytest.raises(nats.errors.TimeoutError):
        await eu.request("$JS.API.STREAM.INFO.ALL_ASIA", b"", timeout=2)
    await eventually(
        lambda: any('"$js.api.stream.info.all_asia"' in e.lower() for e in errors),
        timeout=5, what="stream info refused",
    )  # fmt: skip
    info = json.loads((await admin.request("$JS.API.STREAM.NAMES", b"{}", timeout=5)).data)
    assert EVENTS_STREAM not in (info.get("streams") or [])
