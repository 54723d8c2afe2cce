"""How the relay's store hands its hot statements to psycopg: query text as bytes, integer
arrays as literals the statements cast."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.store.claim import int_array
from outbox_relay.store.sqlfiles import Queries


class TestIntArray:
    def test_an_empty_array_is_a_valid_literal(self) -> None:
        assert int_array(()) == "{}"

    @given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1)))
    def test_reads_back_as_the_same_integers_in_order(self, values: list[int]) -> None:
        literal = int_array(values)
        assert literal.startswith("{")
        assert literal.endswith("}")
        inner = literal[1:-1]
        read_back = [int(v) for v in inner.split(",")] if inner else []
        assert read_back == values

    def test_takes_any_iterable_once(self) -> None:
        assert int_array(pid for pid in (7, 8)) == "{7,8}"


class TestEncoded:
    SCHEMA = 'odd "schéma"'

    def test_is_the_composed_query_in_the_connections_encoding(self) -> None:
        queries = Queries("relay", schema=self.SCHEMA)
        for encoding in ("utf-8", "latin-1"):
            expected = queries["claim_batch"].as_string(None).encode(encoding)
            assert queries.encoded("claim_batch", encoding) == expected
        assert queries.encoded("claim_batch", "utf-8") != queries.encoded("claim_batch", "latin-1")
        assert b'"odd ""sch' in queries.encoded("claim_batch", "utf-8")

    def test_is_rendered_once_per_encoding(self) -> None:
        queries = Queries("relay", schema=self.SCHEMA)
        first = queries.encoded("delete_published", "utf-8")
        assert queries.encoded("delete_published", "utf-8") is first
