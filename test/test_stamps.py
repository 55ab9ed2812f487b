"""The one bounded stamp map the perception node, the summary and the run-bag reader pair with."""

from sac_ros.core.stamps import BoundedStampMap


def test_put_gives_up_the_oldest_insertion_first():
    pending = BoundedStampMap(3)
    for stamp in (30, 10, 20):
        assert pending.put(stamp, str(stamp)) == []
    pending.put(10, "again")  # storing again keeps its place
    assert pending.put(40, "40") == [(30, "30")]
    assert list(pending) == [10, 20, 40] and pending.get(10) == "again"
    assert pending.put(50, "50") == [(10, "again")]


def test_set_then_bound_and_prune():
    pending = BoundedStampMap(2)
    for stamp in (1, 2, 3):
        pending.set(stamp, stamp)
    assert len(pending) == 3  # set alone never gives anything up
    assert pending.bound() == [(1, 1)]
    pending.prune_before(3)
    assert list(pending) == [3] and 3 in pending and 2 not in pending
    assert pending.pop(3) == 3 and pending.pop(3, "gone") == "gone"
    pending.set(7, 7)
    pending.clear()
    assert len(pending) == 0
