"""Passwords never survive redaction, whatever characters they hold and however the URL
is malformed by them."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outbox_relay.urls import redact_url, scrub, url_problem

MARKER = "Zx7Q"  # in every generated password: a piece no URL or message holds otherwise
SCHEMES = ("postgresql", "amqp", "amqps")

# Any character, the URL's delimiters and percent signs made likely.
password_chars = st.one_of(
    st.sampled_from("@/?#:%&=,[] \\'\"$"),
    st.characters(blacklist_categories=("Cs",)),
)
passwords = st.builds(
    lambda left, right: f"{left}{MARKER}{right}",
    st.text(password_chars, max_size=12),
    st.text(password_chars, max_size=12),
)


def url_with(scheme: str, password: str, *, encoded: bool) -> str:
    secret = quote(password, safe="") if encoded else password
    path = "/%2F" if scheme.startswith("amqp") else "/app"
    return f"{scheme}://user:{secret}@db.example:5432{path}"


def assert_no_secret(text: str, password: str) -> None:
    assert password not in text
    assert MARKER not in text


class TestRedactUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("postgresql://u:Hunter2@Secret99@host/db", "postgresql://u:***@host/db"),
            ("amqp://u:Hunter2#Secret99@host/%2F", "amqp://u:***@host/%2F"),
            ("postgresql://u:1234/Secret99@host/db", "postgresql://u:***@host/db"),
            ("postgresql://u:12?Secret99@host:5433/db", "postgresql://u:***@host:5433/db"),
            ("amqp://u:Hunter2/Secret99@host:x/%2F", "<unparseable url>"),
            ("amqp://u/Secret99@host/%2F", "<unparseable url>"),
        ],
    )
    def test_a_password_that_breaks_the_url_is_still_hidden(self, url: str, expected: str) -> None:
        assert redact_url(url) == expected

    @given(st.sampled_from(SCHEMES), passwords, st.booleans())
    def test_no_password_survives(self, scheme: str, password: str, encoded: bool) -> None:
        assert_no_secret(redact_url(url_with(scheme, password, encoded=encoded)), password)

    @given(st.sampled_from(SCHEMES), passwords)
    def test_a_password_in_the_query_is_hidden(self, scheme: str, password: str) -> None:
        url = f"{scheme}://db.example/app?password={quote(password, safe='')}&x=1"
        assert_no_secret(redact_url(url), password)


class TestScrub:
    @pytest.mark.parametrize(
        ("url", "error"),
        [
            (
                "postgresql://u:Hunter2@Secret99@host/db",
                'could not translate host name "Secret99@host" to address',
            ),
            ("amqp://u:Hunter2#Secret99@host/%2F", "invalid port: 'Hunter2'"),
            ("postgresql://u:pa/ss99Word@h/db", 'invalid integer value "pa" for "port"'),
        ],
    )
    def test_pieces_a_driver_cut_out_of_the_password_are_hidden(self, url: str, error: str) -> None:
        scrubbed = scrub(error, url)
        for piece in ("Hunter2", "Secret99"):
            assert piece not in scrubbed
        assert "***" in scrubbed or "pa" in url

    @given(
        st.sampled_from(SCHEMES),
        passwords,
        st.booleans(),
        st.integers(0, 30),
        st.integers(0, 30),
        st.sampled_from(["{}", "{!r}", "'{}'"]),
    )
    def test_any_piece_of_the_password_is_hidden(
        self, scheme: str, password: str, encoded: bool, start: int, length: int, style: str
    ) -> None:
        """Whatever piece of the password an error quotes (raw, decoded or repr'd), no run
        of four of its characters remains."""
        url = url_with(scheme, password, encoded=encoded)
        piece = password[start : start + length]
        scrubbed = scrub(f"error near {style.format(piece)} in the URL", url)
        assert_no_secret(scrubbed, password)
        for cut in range(len(piece) - 3):
            if piece[cut : cut + 4] not in "error near  in the URL":
                assert piece[cut : cut + 4] not in scrubbed

    def test_text_without_secrets_is_left_alone(self) -> None:
        text = "connection refused: is the server running on host db?"
        assert scrub(text, "postgresql://u:Hunter2@db/app") == text


class TestUrlProblem:
    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://u:p%40ss@db:5432/app?sslmode=require",
            "postgresql://db1:5432,db2:5433/app",
            "postgresql://[::1]:5432/app",
            "amqps://guest:guest@mq/%2F?heartbeat=30",
            "host=db password='a b'",
            "postgresql://db/app",
        ],
    )
    def test_well_formed_urls_pass(self, url: str) -> None:
        assert url_problem(url) is None

    @pytest.mark.parametrize(
        ("url", "words"),
        [
            ("postgresql://u:Hunter2@Secret99@db/app", "percent-encode"),
            ("amqp://u:Hunter2#Secret99@mq/%2F", "percent-encode"),
            ("amqp://u:Hunter2/Secret99@mq/%2F", "percent-encode"),
            ("postgresql://u:pw@db:port/app", "'port' is not a number"),
            ("amqp://u:pw@mq:5672x/%2F", "'5672x' is not a number"),
            ("postgresql://u:p\x00w@db/app", "NUL"),
        ],
    )
    def test_malformed_urls_are_named_without_the_password(self, url: str, words: str) -> None:
        problem = url_problem(url)
        assert problem is not None
        assert words in problem
        for secret in ("Hunter2", "Secret99"):
            assert secret not in problem
