"""A distinct counter's members on the memory backend (a heap beside the member -> last-seen
dict) against the sorted set they stand for, written out as plainly as possible: sightings in
any time order (clocks step back), repeats, window trims and the cap."""

from hypothesis import given, settings
from hypothesis import strategies as st

from state.memory import Members

steps = st.lists(st.one_of(
    st.tuples(st.just("add"), st.sampled_from("abcdefgh"), st.integers(0, 40)),
    st.tuples(st.just("trim"), st.none(), st.integers(-5, 45)),     # drop seen <= time
    st.tuples(st.just("cap"), st.none(), st.integers(0, 8)),        # keep the newest n
), max_size=120)


@settings(max_examples=400, deadline=None)
@given(steps=steps)
def test_members_behave_as_a_sorted_set(steps):
    members, model = Members(), {}
    for kind, member, n in steps:
        if kind == "add":
            members.add(member, n)
            model[member] = n
        elif kind == "trim":
            members.drop_oldest(seen_until=n)
            model = {m: t for m, t in model.items() if t > n}
        else:
            members.drop_oldest(keep=n)
            # ZREMRANGEBYRANK: the lowest ranks go, ranked by time, then by member.
            ranked = sorted(model.items(), key=lambda item: (item[1], item[0]))
            model = dict(ranked[max(0, len(ranked) - n):])
        assert members.seen == model
        assert len(members) == len(model)
    # Superseded heap entries stay bounded however often members are seen again.
    assert len(members.heap) <= 2 * len(members) + 16


def test_a_member_seen_again_and_again_keeps_the_heap_small():
    members = Members()
    for t in range(10_000):
        members.add("same", t)
        members.add(f"m{t % 3}", t)
    assert len(members) == 4 and len(members.heap) <= 2 * 4 + 16
    members.drop_oldest(seen_until=9_998)
    assert members.seen == {"same": 9_999, "m0": 9_999}
