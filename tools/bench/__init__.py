"""chatmesh's benchmark: ADR-010's targets measured on a running mesh (``make bench``).

``python -m tools.bench [--scenarios ...] [--topology dev|three-regions] [--quick]
[--out DIR] [--seed N] [--stores auto|embedded|production]`` starts each topology
through the same harness as ``chatmesh up`` (WAN latencies from the topology,
Toxiproxy on every region-to-region link), drives it from separate load-generator
processes (:mod:`tools.bench.loadgen`, one per region, each with its own asyncio
loop and grpc.aio clients) that speak the public gRPC API through the regional
entries (the edges), and writes ``results.json``, one PNG latency CDF per path
and the py-spy profiles into ``bench-results/<timestamp>/`` (``latest`` links to
it). A full run also rewrites the generated block of ``docs/benchmarks.md``.

Scenarios (:mod:`tools.bench.scenarios`), in the order they run on a topology:

* ``floor``: bare NATS publish->receive over the same WAN proxies (direct, and
  via a relay in the primary: chatmesh's route), the denominator of the ratios;
* ``delivery``: send->receive latency per (sender region, receiver region) path
  with thousands of live streams and a steady open-loop send rate, scaled down
  (and reported) if a probe shows the machine cannot sustain it;
* ``history``: GetHistory(limit=50) per region (and on Cassandra when the
  production-stores harness exists);
* ``presence``: a user's first stream opens in one region -> GetPresence
  answers ONLINE in each other region;
* ``throughput``: rising send rates until the primary's same-region p99 passes
  50 ms or errors appear; CPU of every process per step; a py-spy profile of
  the two busiest services at the limit (first topology only);
* ``routing``: 50K users x 20 memberships in the Fan-Out's table (memberships
  written into the primary's SQLite metadata store, Fan-Out restarted, routes
  registered by fake notification instances over NATS); RSS, bytes per route,
  GetRoute latency (first topology only);
* ``single`` (:mod:`tools.bench.single`, on topology ``single`` by default; in a
  full run, not in ``--quick``): issue 14's single-region workload (2,000 streams,
  one per connection, through the edge) beside a bare-NATS fan-out floor: CPU per
  1,000 deliveries/s of every process, delivery p50/p99, the knee, SendMessage and
  GetHistory(50) rates at concurrency 1/8/32 (ghz and the Python generator), RSS
  per stream, each as measured / target / ratio to the floor.

Timing: every timestamp is ``CLOCK_MONOTONIC`` (``time.monotonic_ns``), one
clock for all processes of the machine; the send time travels in the message.

Example:
    From the repository root::

        make bench                                   # both topologies, ~15 min
        .venv/bin/python -m tools.bench --quick      # < 60 s smoke run (dev only)
        .venv/bin/python -m tools.bench --topology dev --scenarios floor,delivery
        .venv/bin/python -m tools.bench --scenarios single   # issue 14's single region
"""

__all__: list[str] = []
