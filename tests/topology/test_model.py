"""The topology file: built-ins load, bad files fail with every problem named."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.topology import TopologyError, builtin_names, load, parse


def test_builtins_load_with_published_latencies() -> None:
    assert {"dev", "three-regions", "ha", "single"} <= set(builtin_names())
    dev = load("dev")
    assert dev.primary == "us-east" and dev.region_names == ["us-east", "eu"]
    assert dev.latency_ms("us-east", "eu") == 35 and dev.latency_ms("eu", "eu") == 0
    three = load("three-regions")
    assert three.latency_ms("asia", "us-east") == 73
    assert three.latency_ms("eu", "asia") == 100
    ha = load("ha")
    assert all(r.nats_nodes == 3 for r in ha.regions)
    assert ha.nats.events_replicas == 3


def test_safe_durability_default() -> None:
    topo = load("dev")
    assert topo.nats.sync_interval_primary == "always"


def test_every_problem_is_reported_with_its_key() -> None:
    data = {
        "name": "broken",
        "primary": "mars",
        "bogus": 1,
        "region": [{"name": "us-east", "nats_nodes": 9}, {"name": "EU"}, {"name": "asia"}],
        "link": [{"regions": ["us-east", "asia"], "latency_ms": -1}],
        "nats": {"events_replicas": 2, "sync_interval_primary": "sometimes"},
    }
    with pytest.raises(TopologyError) as info:
        parse(data, source="broken.toml")
    problems = "\n".join(info.value.problems)
    assert "bogus: unknown key" in problems
    assert "region us-east.nats_nodes: 9 must be an integer from 1 to 5" in problems
    assert "region[1].name: 'EU'" in problems
    assert "primary: 'mars' must name one of the regions" in problems
    assert "link asia<->us-east.latency_ms: -1" in problems
    assert "nats.events_replicas: 2 must be 1 or 3" in problems
    assert "nats.sync_interval_primary: 'sometimes'" in problems
    assert str(info.value).startswith("invalid topology broken.toml:")


def test_missing_link_between_regions_is_an_error() -> None:
    data = {"name": "x", "primary": "a1", "region": [{"name": "a1"}, {"name": "b1"}], "link": []}
    with pytest.raises(TopologyError, match="missing \\[\\[link\\]\\] between 'a1' and 'b1'"):
        parse(data)


def test_unreadable_and_non_toml_files(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="built-in topologies: dev"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(TopologyError, match="not valid TOML"):
        load(bad)


def test_describe_names_what_it_starts() -> None:
    text = load("three-regions").describe()
    assert "link eu <-> asia" not in text  # links are normalised alphabetically
    assert "link asia <-> eu: 100 ms one-way (200 ms RTT)" in text
    assert "region us-east (primary): 1 NATS node(s)" in text


def test_limits_have_safe_defaults_and_are_validated() -> None:
    dev = load("dev").limits
    # The probe in issue 13 sent 1,744 messages in 12 s and held 300 streams.
    assert 0 < dev.send_per_s < 145 and 0 < dev.send_burst < 1744
    assert 0 < dev.streams_per_user < 300
    assert all(load(name).limits.edge_per_s > 0 for name in builtin_names())
    base = {"name": "x", "primary": "a1", "region": [{"name": "a1"}]}
    custom = parse({**base, "limits": {"send_per_s": 0.5, "send_burst": 2}}).limits
    assert (custom.send_per_s, custom.send_burst, custom.join_burst) == (0.5, 2, dev.join_burst)
    off = parse({**base, "limits": {"typing_per_s": 0, "typing_burst": 0}}).limits
    assert (off.typing_per_s, off.typing_burst) == (0.0, 0)
    with pytest.raises(TopologyError) as info:
        parse(
            {
                **base,
                "limits": {"send_per_s": -1, "join_burst": 0, "speed": 3, "streams_per_user": "x"},
            }
        )
    problems = "\n".join(info.value.problems)
    assert "limits.send_per_s: -1 must be a number" in problems
    assert "limits.join: join_per_s and join_burst must both be 0" in problems
    assert "limits.speed: unknown key" in problems
    assert "limits.streams_per_user: 'x' must be an integer" in problems


def test_the_write_mode_defaults_to_primary_and_is_validated() -> None:
    from mesh.bus import subjects
    from mesh.topology import WRITES_EVERY_REGION, WRITES_PRIMARY

    # The topology cannot import the bus (layers): the two spellings must agree.
    assert (WRITES_PRIMARY, WRITES_EVERY_REGION) == (
        subjects.WRITES_PRIMARY,
        subjects.WRITES_EVERY_REGION,
    )
    assert all(load(n).writes == WRITES_PRIMARY for n in ("dev", "three-regions", "ha", "single"))
    assert not load("three-regions").every_region
    base = {"name": "x", "primary": "a1", "region": [{"name": "a1"}, {"name": "b1"}],
            "link": [{"regions": ["a1", "b1"], "latency_ms": 5}]}  # fmt: skip
    assert parse({**base, "writes": "every-region"}).every_region
    with pytest.raises(TopologyError) as info:
        parse({**base, "writes": "everywhere"})
    assert info.value.problems == [
        "writes: 'everywhere' must be 'primary' or 'every-region' (default 'primary')"
    ]
    # One write path per region in that mode: no active/standby pair anywhere yet.
    regions = [{"name": "a1", "write_instances": 2}, {"name": "b1"}]
    with pytest.raises(TopologyError, match="a1: write_instances: the every-region mode"):
        parse({**base, "writes": "every-region", "region": regions})
    assert parse({**base, "region": regions}).region("a1").write_instances == 2


def test_three_regions_autonomous_is_three_regions_writing_everywhere() -> None:
    auto, three = load("three-regions-autonomous"), load("three-regions")
    assert auto.every_region and auto.writes == "every-region"
    assert (auto.primary, auto.regions, auto.links) == (three.primary, three.regions, three.links)
    assert all(auto.writes_in(r) for r in auto.region_names)
    assert [r for r in three.region_names if three.writes_in(r)] == ["us-east"]
    # Every region holds acknowledged writes: every region fsyncs as the primary does.
    assert {auto.sync_interval(r) for r in auto.region_names} == {"always"}
    assert three.sync_interval("eu") == "default"
    text = auto.describe()
    assert "writes every-region" in text
    assert "region asia (writes): 1 NATS node(s)" in text
    assert "EVENTS_<REGION> + ALL_<REGION> per region" in text
    assert "writes primary" in three.describe()
