"""The Fan-Out routing table: memberships ordered by seq, routes, multi-instance users, expiry."""

from __future__ import annotations

from services.fanout.table import RoutingTable


def _targets(table: RoutingTable, audience: set[int]) -> dict[str, list[str]]:
    return {
        table.instance(slot).instance_id: sorted(users)
        for slot, users in table.targets(audience).items()
    }


def _instance(table: RoutingTable, name: str, region: str = "eu") -> int:
    return table.add_instance(name, region, f"chatmesh.dlv.{region}.{name}", epoch="fo_1")


def test_targets_group_a_channels_routed_members_by_instance() -> None:
    table = RoutingTable()
    table.set_members("ch_1", ["alice", "bob", "carol", "dave"], seq=1)
    n1, n2 = _instance(table, "n1"), _instance(table, "n2", "us-east")
    table.add_routes(n1, ["alice", "bob"])
    table.add_routes(n2, ["carol"])

    assert _targets(table, table.channel_audience("ch_1")) == {
        "n1": ["alice", "bob"],
        "n2": ["carol"],  # dave has no stream: no delivery for him anywhere
    }
    assert table.routed_users == 3 and table.route_count == 3
    assert table.instance(n2).epoch == f"fo_1.{n2}" and table.instance(n2).region == "us-east"


def test_add_instance_is_idempotent() -> None:
    table = RoutingTable()
    first = _instance(table, "n1")
    assert _instance(table, "n1") == first and len(table.instances()) == 1
    assert table.slot_of("n1") == first and table.slot_of("nope") is None


def test_remove_and_replace_routes() -> None:
    table = RoutingTable()
    table.set_members("ch_1", ["alice", "bob", "carol"], seq=1)
    n1 = _instance(table, "n1")
    table.add_routes(n1, ["alice", "bob"])
    table.add_routes(n1, ["alice"])  # again: no duplicate route
    assert table.route_count == 2

    table.remove_routes(n1, ["alice", "nobody"])
    assert _targets(table, table.channel_audience("ch_1")) == {"n1": ["bob"]}

    table.replace_routes(n1, ["carol", "alice"])  # a snapshot: exactly these
    assert _targets(table, table.channel_audience("ch_1")) == {"n1": ["alice", "carol"]}
    assert table.route_of("bob") == [] and table.routed_users == 2


def test_a_user_on_several_instances_is_delivered_to_each() -> None:
    table = RoutingTable()
    table.set_members("ch_1", ["alice", "bob"], seq=1)
    n1, n2, n3 = (_instance(table, n) for n in ("n1", "n2", "n3"))
    for slot in (n1, n2, n3):
        table.add_routes(slot, ["alice"])
    table.add_routes(n2, ["bob"])

    assert _targets(table, table.channel_audience("ch_1")) == {
        "n1": ["alice"],
        "n2": ["alice", "bob"],
        "n3": ["alice"],
    }
    assert [i.instance_id for i in table.route_of("alice")] == ["n1", "n2", "n3"]

    table.remove_routes(n2, ["alice"])
    assert [i.instance_id for i in table.route_of("alice")] == ["n1", "n3"]
    table.remove_routes(n1, ["alice"])
    assert [i.instance_id for i in table.route_of("alice")] == ["n3"]
    assert _targets(table, table.channel_audience("ch_1")) == {"n2": ["bob"], "n3": ["alice"]}
    assert table.routed_users == 2


def test_membership_changes_apply_in_seq_order_and_older_ones_are_ignored() -> None:
    table = RoutingTable()
    table.set_members("ch_1", ["alice"], seq=3)
    assert table.add_member("ch_1", "bob", seq=4)
    assert not table.add_member("ch_1", "carol", seq=4), "a seq already applied"
    assert not table.add_member("ch_1", "carol", seq=2), "an older change"
    assert table.members("ch_1") == ["alice", "bob"]

    assert table.remove_member("ch_1", "alice", seq=6)
    assert not table.add_member("ch_1", "alice", seq=5), "a join older than the leave"
    assert table.members("ch_1") == ["bob"]
    assert not table.remove_member("ch_1", "bob", seq=5)
    assert table.members("ch_1") == ["bob"]

    table.set_members("ch_1", ["zoe"], seq=5)  # a snapshot older than what the table has
    assert table.members("ch_1") == ["bob"]
    table.set_members("ch_1", ["zoe", "bob"], seq=9)
    assert table.members("ch_1") == ["bob", "zoe"] and table.memberships == 2


def test_user_audience_follows_membership_changes() -> None:
    table = RoutingTable()
    table.set_members("ch_1", ["alice", "bob"], seq=1)
    table.set_members("ch_2", ["alice", "carol"], seq=1)
    n1 = _instance(table, "n1")
    table.add_routes(n1, ["alice", "bob", "carol", "dave"])

    def peers(user: str) -> list[str]:
        return _targets(table, table.user_audience(user, with_peers=True)).get("n1", [])

    assert peers("alice") == ["alice", "bob", "carol"]
    assert _targets(table, table.user_audience("alice", with_peers=False)) == {"n1": ["alice"]}
    table.remove_member("ch_2", "carol", seq=2)
    assert peers("alice") == ["alice", "bob"]
    assert peers("carol") == ["carol"]
    table.add_member("ch_2", "dave", seq=3)
    assert peers("dave") == ["alice", "dave"]
    assert table.knows_channel("ch_2") and not table.knows_channel("ch_3")
    table.set_members("ch_1", ["bob"], seq=2)  # a snapshot without alice
    assert peers("alice") == ["alice", "dave"] and peers("bob") == ["bob"]


def test_channel_audience_extra_users_are_included() -> None:
    table = RoutingTable()
    table.set_members("ch_1", ["alice"], seq=1)
    n1 = _instance(table, "n1")
    table.add_routes(n1, ["alice", "bob"])
    assert _targets(table, table.channel_audience("ch_1", extra=["bob"])) == {
        "n1": ["alice", "bob"]
    }
    assert _targets(table, table.channel_audience("ch_unknown")) == {}


def test_removing_an_instance_returns_only_the_users_now_routed_nowhere() -> None:
    table = RoutingTable()
    table.set_members("ch_1", ["alice", "bob", "carol"], seq=1)
    n1, n2 = _instance(table, "n1"), _instance(table, "n2")
    table.add_routes(n1, ["alice", "bob"])
    table.add_routes(n2, ["bob", "carol"])

    assert sorted(table.remove_instance(n1)) == ["alice"]  # bob still has a stream on n2
    assert table.slot_of("n1") is None and [i.instance_id for i in table.instances()] == ["n2"]
    assert _targets(table, table.channel_audience("ch_1")) == {"n2": ["bob", "carol"]}
    assert sorted(table.remove_instance(n2)) == ["bob", "carol"]
    assert table.routed_users == 0 and table.targets(table.channel_audience("ch_1")) == {}

    again = _instance(table, "n1")  # re-registered: a new slot, so a new delivery epoch
    assert again not in (n1, n2) and table.instance(again).epoch != f"fo_1.{n1}"
    assert table.instance(again).delivery_seq == 0


def test_the_size_estimate_grows_with_the_table() -> None:
    table = RoutingTable()
    empty = table.estimated_bytes()
    n1 = _instance(table, "n1")
    for c in range(50):
        table.set_members(f"ch_{c}", [f"user_{c}_{u}" for u in range(20)], seq=1)
    table.add_routes(n1, [f"user_{c}_0" for c in range(50)])
    assert table.estimated_bytes() > empty + 50 * 20 * 4
    assert table.channel_count == 50 and table.memberships == 1000
