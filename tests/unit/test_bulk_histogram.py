"""BulkHistogram scrapes as prometheus_client's Histogram does for the same values."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from outbox_relay.observability.bulk_histogram import BulkHistogram
from outbox_relay.observability.relay_metrics import LATENCY_BUCKETS_S

NAME = "outbox_relay_test_seconds"
# Values on the bucket bounds themselves, where an off-by-one would show, and around them.
values = st.one_of(
    st.sampled_from(LATENCY_BUCKETS_S),
    st.floats(min_value=0.0, max_value=1000.0, allow_nan=False),
)


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    """Every sample of the histogram but ``_created``, which BulkHistogram leaves out."""
    found = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if not sample.name.endswith("_created"):
                found[sample.name + str(sorted(sample.labels.items()))] = sample.value
    return found


@given(st.lists(st.lists(values, max_size=50), max_size=5))
def test_batches_scrape_as_one_observation_at_a_time(batches: list[list[float]]) -> None:
    bulk_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    bulk = BulkHistogram(NAME, "doc", buckets=LATENCY_BUCKETS_S, registry=bulk_registry)
    reference = Histogram(NAME, "doc", buckets=LATENCY_BUCKETS_S, registry=reference_registry)
    for batch in batches:
        bulk.observe_many(batch)
        for value in batch:
            reference.observe(value)

    got, expected = scrape(bulk_registry), scrape(reference_registry)
    sum_key = next(key for key in expected if key.startswith(f"{NAME}_sum"))
    assert math.isclose(got.pop(sum_key), expected.pop(sum_key), rel_tol=1e-9, abs_tol=1e-9)
    assert got == expected


def test_a_generator_is_read_once_and_counted() -> None:
    registry = CollectorRegistry()
    bulk = BulkHistogram(NAME, "doc", buckets=(1.0, 2.0), registry=registry)
    bulk.observe_many(v / 2 for v in range(6))  # 0, 0.5, 1, 1.5, 2, 2.5

    assert registry.get_sample_value(f"{NAME}_bucket", {"le": "1.0"}) == 3
    assert registry.get_sample_value(f"{NAME}_bucket", {"le": "2.0"}) == 5
    assert registry.get_sample_value(f"{NAME}_bucket", {"le": "+Inf"}) == 6
    assert registry.get_sample_value(f"{NAME}_count") == 6
    assert registry.get_sample_value(f"{NAME}_sum") == 7.5
