"""Where the tests find PostgreSQL and RabbitMQ: the variable, the defaults, testcontainers."""

from __future__ import annotations

import pytest

from tests.support.services import (
    AMQP,
    POSTGRES,
    Found,
    Service,
    resolve,
    summary_line,
    unavailable_reason,
)

TEST_DB = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_DB = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULTS = (TEST_DB, POSTGRES_DB)


class Answering:
    """A fake "does a service answer at this URL?" that records what it was asked."""

    def __init__(self, *urls: str) -> None:
        self.urls = set(urls)
        self.asked: list[str] = []

    def __call__(self, url: str) -> bool:
        self.asked.append(url)
        return url in self.urls


def never() -> bool:
    raise AssertionError("Docker was probed although a service answered")


class TestResolve:
    def test_the_variable_wins_and_nothing_is_probed(self) -> None:
        answers = Answering(TEST_DB)
        found = resolve("postgresql://me@db/app", DEFAULTS, answers, never)
        assert found == Found("postgresql://me@db/app", "env")
        assert answers.asked == []

    def test_an_empty_variable_counts_as_unset(self) -> None:
        found = resolve("", DEFAULTS, Answering(TEST_DB), never)
        assert found == Found(TEST_DB, "defaults")

    def test_the_test_database_is_preferred(self) -> None:
        answers = Answering(TEST_DB, POSTGRES_DB)
        found = resolve(None, DEFAULTS, answers, never)
        assert found == Found(TEST_DB, "defaults")
        assert answers.asked == [TEST_DB]

    def test_the_postgres_database_when_there_is_no_test_database(self) -> None:
        answers = Answering(POSTGRES_DB)
        found = resolve(None, DEFAULTS, answers, never)
        assert found == Found(POSTGRES_DB, "defaults")
        assert answers.asked == [TEST_DB, POSTGRES_DB]

    def test_testcontainers_when_nothing_answers_and_docker_does(self) -> None:
        found = resolve(None, DEFAULTS, Answering(), lambda: True)
        assert found == Found(None, "testcontainers")

    def test_nothing_when_neither_the_defaults_nor_docker_answer(self) -> None:
        assert resolve(None, DEFAULTS, Answering(), lambda: False) is None


class TestMessages:
    @pytest.mark.parametrize("service", [POSTGRES, AMQP])
    def test_the_reason_is_one_line_naming_the_urls_the_variable_and_a_start_command(
        self, service: Service
    ) -> None:
        reason = unavailable_reason(service)
        assert "\n" not in reason
        assert service.env in reason
        assert all(url in reason for url in service.defaults)
        assert service.start in reason

    def test_the_summary_names_each_service_and_its_source_without_passwords(self) -> None:
        line = summary_line(
            {
                "PostgreSQL": Found(
                    "postgresql://test:secret@localhost:32768/test", "testcontainers"
                ),
                "RabbitMQ": Found("amqp://guest:guest@127.0.0.1:5672/%2F", "defaults"),
            }
        )
        assert line == (
            "services: PostgreSQL at postgresql://test:***@localhost:32768/test "
            "(from testcontainers), RabbitMQ at amqp://guest:***@127.0.0.1:5672/%2F "
            "(from defaults)"
        )
        assert "secret" not in line
