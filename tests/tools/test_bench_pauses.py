"""tools.bench.pauses: a phase's pauses from two scrapes of a service's metrics."""

from __future__ import annotations

from tools.bench import pauses

_PAGE = """\
chatmesh_gc_pause_seconds_bucket{{generation="0",le="0.01",service="n"}} {fast0}
chatmesh_gc_pause_seconds_count{{generation="0",service="n"}} {all0}
chatmesh_gc_pause_seconds_sum{{generation="0",service="n"}} {sum0}
chatmesh_gc_pause_seconds_bucket{{generation="2",le="0.01",service="n"}} 0.0
chatmesh_gc_pause_seconds_count{{generation="2",service="n"}} {all2}
chatmesh_gc_pause_seconds_sum{{generation="2",service="n"}} {sum2}
chatmesh_event_loop_lag_seconds_bucket{{le="0.01",service="n"}} {lag10}
chatmesh_event_loop_lag_seconds_bucket{{le="0.05",service="n"}} {lag50}
chatmesh_event_loop_lag_seconds_count{{service="n"}} {ticks}
chatmesh_rpc_requests_total{{service="n"}} 7.0
"""


def test_diff_counts_what_happened_between_the_scrapes() -> None:
    before = pauses.parse(
        _PAGE.format(fast0=10, all0=10, sum0=0.01, all2=0, sum2=0, lag10=50, lag50=50, ticks=50)
    )
    after = pauses.parse(
        _PAGE.format(
            fast0=20, all0=21, sum0=0.05, all2=1, sum2=0.137, lag10=140, lag50=148, ticks=150
        )
    )
    d = pauses.diff(before, after)
    assert d["gc_count"] == 12
    assert d["gc_over_10ms"] == 2  # one young collection and the full one
    assert d["gc_total_ms"] == 177.0
    assert (d["gc_full"], d["gc_full_ms"]) == (1, 137.0)
    assert (d["lag_ticks"], d["lag_over_10ms"], d["lag_over_50ms"]) == (100, 10, 2)
    assert "n 10 ticks >= 10 ms late, 2 GCs >= 10 ms" in pauses.brief({"n": d})


def test_a_generator_summary_reads_like_a_service_one() -> None:
    summary = {
        "seconds": 8.0,
        "gc": {
            "gen0": {"count": 3, "total_ms": 1.5, "max_ms": 0.9},
            "gen1": {"count": 0, "total_ms": 0.0, "max_ms": 0.0},
            "gen2": {"count": 1, "total_ms": 40.0, "max_ms": 40.0},
        },
        "lag": {"n": 400, "p50_ms": 0.1, "p99_ms": 3.0, "max_ms": 41.0},
    }
    g = pauses.generator(summary)
    assert (g["gc_count"], g["gc_max_ms"], g["lag_max_ms"]) == (4, 40.0, 41.0)
    assert pauses.brief({"gen-recv-1": g}).startswith("gen-recv-1 lag max 41")
    assert pauses.brief({}) == "no pause >= 10 ms"
