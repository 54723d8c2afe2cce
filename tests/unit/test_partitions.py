"""How relays split partitions, and the partition of a key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.relay.partitions import fair_share, partition_for, surplus
from outbox_relay.status_view import _ranges


class TestFairShare:
    @given(st.integers(1, 256), st.sets(st.text(min_size=1, max_size=8), min_size=1, max_size=20))
    def test_shares_add_up_to_every_partition_and_differ_by_at_most_one(
        self, partitions: int, relays: set[str]
    ) -> None:
        shares = [fair_share(partitions, sorted(relays), me) for me in relays]
        assert sum(shares) == partitions
        assert max(shares) - min(shares) <= 1

    def test_a_relay_not_yet_in_the_list_counts_itself(self) -> None:
        assert fair_share(16, [], "a") == 16
        assert fair_share(16, ["b"], "a") == 8

    def test_surplus_hands_back_the_highest(self) -> None:
        assert surplus([4, 1, 9, 2], share=2) == [4, 9]
        assert surplus([1, 2], share=3) == []


class TestPartitionFor:
    @given(st.text(min_size=1), st.integers(1, 1024))
    def test_in_range_and_independent_of_the_row(self, key: str, partitions: int) -> None:
        value = partition_for(key, row_id=1, partitions=partitions)
        assert 0 <= value < partitions
        assert value == partition_for(key, row_id=999, partitions=partitions)

    @pytest.mark.parametrize(("key", "expected"), [("abc", 9), ("order-1", 10)])
    def test_known_values_are_stable_across_releases(self, key: str, expected: int) -> None:
        assert partition_for(key, row_id=0, partitions=16) == expected

    def test_rows_without_a_key_spread_by_id(self) -> None:
        assert [partition_for(None, row_id=i, partitions=4) for i in range(6)] == [0, 1, 2, 3, 0, 1]


def test_partition_ranges_read_compactly() -> None:
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert _ranges([]) == "-"
