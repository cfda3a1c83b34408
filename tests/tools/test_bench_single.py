"""The single-region scenario's pure parts: knee, ratios, figures, the docs blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.bench.report import DOC_BEGIN, DOC_END, SINGLE_BEGIN, SINGLE_END, write_docs
from tools.bench.single import _split, figures, per_process_rows
from tools.bench.stats import knee, per_1000, ratio


def test_the_knee_is_the_last_pass_before_the_first_failure() -> None:
    assert knee([(500, True), (1000, True), (2000, False), (3000, True)]) == 1000
    assert knee([(500, True), (1000, True)]) == 1000
    assert knee([(500, False), (1000, True)]) is None
    assert knee([]) is None


def test_cpu_per_1000_and_ratio() -> None:
    assert per_1000(154.0, 1000.0) == 154.0
    assert per_1000(30.0, 500.0) == 60.0
    assert per_1000(30.0, 0.0) is None
    assert ratio(11.1, 1.3) == 8.54
    assert ratio(None, 1.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None


def test_concurrency_is_split_over_the_generator_processes_exactly() -> None:
    assert _split(1, 2) == [1]
    assert _split(8, 2) == [4, 4]
    assert _split(33, 2) == [17, 16]
    assert sum(_split(32, 3)) == 32


def _unary(tool: str, c: int, rps: float, p99: float, cpu_ms: float) -> dict[str, Any]:
    return {
        "tool": tool,
        "ok": 1000,
        "concurrency": c,
        "requests_per_s": rps,
        "errors": {},
        "latency": {"n": 10, "p50_ms": p99 / 2, "p99_ms": p99},
        "server_cpu_ms_per_call": cpu_ms,
        "cpu": {"generators_percent_of_one_core": 40.0},
    }


def result() -> dict[str, Any]:
    cpu = {
        "machine_percent_of_all_cores": 80.0,
        "background_percent_of_all_cores": 5.0,
        "server_percent_of_one_core": 150.0,
        "generators_percent_of_one_core": 30.0,
        "servers": {"envoy-us-east": 50.0, "us-east-1": 5.0},
        "generators": {"gen-recv-1": 30.0},
    }
    step = {
        "planned_deliveries_per_s": 500,
        "deliveries_per_s": 498.0,
        "passed": True,
        "why_not": "",
        "latency": {"n": 1, "p50_ms": 9.0, "p99_ms": 30.0},
        "cpu": cpu,
    }
    return {
        "status": "ok",
        "plan": {"channel_size": 10},
        "streams": {"open": 2000, "seconds": 40.0},
        "load_tool": "ghz v0.93.0",
        "process_kinds": {"us-east-1": "nats-server"},
        "rss": {"kib_per_stream": 122.0},
        "floor": {
            "latency": {"n": 5, "p50_ms": 1.0, "p99_ms": 2.5},
            "nats_cpu_per_1000_deliveries_per_s": 4.0,
        },
        "delivery": {
            "planned_deliveries_per_s": 1000,
            "deliveries_per_s": 1000.0,
            "cpu": cpu,
            "latency": {"n": 5, "p50_ms": 11.0, "p99_ms": 30.0},
            "server_cpu_per_1000_deliveries_per_s": 150.0,
            "cpu_per_1000_by_process": {"envoy-us-east": 50.0, "us-east-1": 5.0},
        },
        "knee": {
            "deliveries_per_s": 500,
            "failed_at": 1000,
            "failed_because": "p99 60 ms > 50 ms",
            "steps": [
                step,
                {
                    **step,
                    "planned_deliveries_per_s": 1000,
                    "passed": False,
                    "why_not": "p99 60 ms > 50 ms",
                },
            ],
        },
        "send": [
            _unary("ghz", 32, 160.0, 300.0, 8.0),
            _unary("python", 32, 150.0, 310.0, 8.5),
            _unary("ghz", 8, 170.0, 90.0, 7.9),
        ],
        "history": [_unary("ghz", 8, 490.0, 20.0, 1.5), _unary("python", 32, 400.0, 90.0, 1.6)],
    }


def test_every_issue_14_figure_has_a_target_and_the_floor_ratio_where_measured() -> None:
    rows = {r["key"]: r for r in figures(result())}
    assert set(rows) == {
        "cpu_per_1000_deliveries",
        "knee_deliveries_per_s",
        "delivery_p50_ms",
        "delivery_p99_ms",
        "send_rps_c32",
        "send_p99_ms_c32",
        "send_cpu_ms",
        "history_rps",
        "rss_kib_per_stream",
    }
    cpu = rows["cpu_per_1000_deliveries"]
    assert (cpu["measured"], cpu["target"], cpu["met"], cpu["ratio_to_floor"]) == (
        150.0,
        "<= 25",
        False,
        37.5,
    )
    assert rows["delivery_p99_ms"]["ratio_to_floor"] == 12.0
    assert rows["knee_deliveries_per_s"]["met"] is False
    assert "failed at 1000" in rows["knee_deliveries_per_s"]["where"]
    # The best run at concurrency 32 counts (ghz here), the best history run at any.
    assert rows["send_rps_c32"]["measured"] == 160.0 and "ghz" in rows["send_rps_c32"]["figure"]
    assert rows["send_cpu_ms"]["measured"] == 8.0
    assert rows["history_rps"]["measured"] == 490.0
    assert rows["rss_kib_per_stream"]["ratio_to_floor"] is None


def test_runs_with_errors_do_not_count_and_a_first_failed_step_is_a_knee_of_zero() -> None:
    res = result()
    res["history"][0]["errors"] = {"PermissionDenied": 900}  # ghz's 490 req/s of refusals
    res["knee"]["deliveries_per_s"] = None
    res["knee"]["steps"][0]["passed"] = False
    rows = {r["key"]: r for r in figures(res)}
    assert rows["history_rps"]["measured"] == 400.0 and "python" in rows["history_rps"]["figure"]
    assert (rows["knee_deliveries_per_s"]["measured"], rows["knee_deliveries_per_s"]["met"]) == (
        0.0,
        False,
    )


def test_per_process_rows_name_nats_and_keep_the_load_generators_apart() -> None:
    rows = per_process_rows(result())
    names = [r[0] for r in rows]
    assert "us-east-1 (nats-server)" in names
    assert names.index("TOTAL servers") < names.index("(load) gen-recv-1")


def _results(single: bool, multi: bool) -> dict[str, Any]:
    meta = {
        "started_at": "2026-12-04T13:00:00+00:00",
        "duration_s": 300.0,
        "results_dir": "r",
        "command": "python -m tools.bench",
        "seed": 1,
        "loadavg_before": "1.0 1.0 1.0",
        "machine": {"nproc": 2, "cpu_model": "cpu", "mem_total_gib": 8, "kernel": "6"},
        "versions": {
            "chatmesh_git_sha": "abc",
            "python": "3.11",
            "grpcio": "1",
            "nats-py": "2",
            "nats-server": "v2",
            "toxiproxy": "v2",
            "envoy": "1",
        },
    }
    topologies: dict[str, Any] = {}
    if multi:
        topologies["dev"] = {
            "topology": {"primary": "us-east", "links": []},
            "scenarios": {"history": {"regions": {}, "summary": {}}},
        }
    if single:
        topologies["single"] = {
            "topology": {"primary": "us-east", "links": []},
            "scenarios": {"single": result()},
        }
    return {"meta": meta, "topologies": topologies, "notes": [], "targets": []}


def test_a_single_only_run_rewrites_only_the_single_block(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\nhand-written\n\n{DOC_BEGIN}\nold multi\n{DOC_END}\n")
    write_docs(doc, _results(single=True, multi=False))
    text = doc.read_text()
    assert "old multi" in text and "hand-written" in text
    assert text.index(DOC_END) < text.index(SINGLE_BEGIN) < text.index(SINGLE_END)
    assert "server CPU per 1,000 deliveries/s" in text and "x37.5" in text
    # A multi-region run later keeps the single block.
    write_docs(doc, _results(single=False, multi=True))
    text = doc.read_text()
    assert "old multi" not in text and "x37.5" in text
    assert text.count(SINGLE_BEGIN) == 1 and text.count(DOC_BEGIN) == 1
