"""PrometheusCollector: the exposition text after a known sequence of collector calls."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from geamqp.metrics import ConnectionInfo
from geamqp.metrics.prometheus import PrometheusCollector


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition text, parsed back: (name, labels) -> value."""
    text = generate_latest(registry).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          connection: str = "billing", vhost: str = "/", **extra: str) -> float:
    labels = tuple(sorted({"connection": connection, "vhost": vhost, **extra}.items()))
    return samples[(name, labels)]


def test_exposition_after_a_scripted_workload() -> None:
    registry = CollectorRegistry()
    collector = PrometheusCollector(registry=registry)
    conn = ConnectionInfo("billing", "/", "127.0.0.1", 5672)
    collector.connection_opened(conn)
    collector.channel_opened(conn, 1)
    collector.channel_opened(conn, 2)
    for size in (100, 200, 300):
        collector.message_published(conn, 1, "", "orders", size)
    collector.publish_acked(conn, 1, 0.002)
    collector.publish_acked(conn, 1, 0.004)
    collector.publish_returned(conn, 1, "amq.direct", "nobody", 312)
    collector.publish_nacked(conn, 1, 0.3)
    collector.consumer_added(conn, 2, "orders", "ctag-1")
    collector.message_delivered(conn, 2, 100, False)
    collector.message_delivered(conn, 2, 200, True)
    collector.delivery_acked(conn, 2, 2, True)
    collector.delivery_nacked(conn, 2, 3, False, True)
    collector.delivery_rejected(conn, 2, 4, False)
    collector.connection_blocked(conn, "low on memory")
    blocked = scrape(registry)
    assert value(blocked, "geamqp_connection_blocked") == 1
    collector.connection_unblocked(conn, 1.25)
    collector.thread_callbacks_pending(conn, 7)
    collector.connection_lost(conn, ConnectionResetError())
    lost = scrape(registry)
    assert value(lost, "geamqp_connections") == 0
    collector.connection_recovered(conn, 0.75)
    collector.channel_closed(conn, 2, None)

    s = scrape(registry)
    assert value(s, "geamqp_connections") == 1
    assert value(s, "geamqp_connections_opened_total") == 1
    assert value(s, "geamqp_connection_losses_total") == 1
    assert value(s, "geamqp_connection_recoveries_total") == 1
    assert value(s, "geamqp_connection_recovery_seconds_sum") == 0.75
    assert value(s, "geamqp_connection_recovery_seconds_bucket", le="1.0") == 1
    assert value(s, "geamqp_connection_recovery_seconds_bucket", le="0.5") == 0
    assert value(s, "geamqp_channels") == 1
    assert value(s, "geamqp_channels_opened_total") == 2
    assert value(s, "geamqp_channels_closed_total") == 1
    assert value(s, "geamqp_published_messages_total") == 3
    assert value(s, "geamqp_published_bytes_total") == 600
    assert value(s, "geamqp_confirmed_messages_total", outcome="ack") == 2
    assert value(s, "geamqp_confirmed_messages_total", outcome="nack") == 1
    assert value(s, "geamqp_confirm_latency_seconds_count") == 3
    assert value(s, "geamqp_confirm_latency_seconds_sum") == pytest.approx(0.306)
    assert value(s, "geamqp_confirm_latency_seconds_bucket", le="0.0025") == 1
    assert value(s, "geamqp_confirm_latency_seconds_bucket", le="0.005") == 2
    assert value(s, "geamqp_confirm_latency_seconds_bucket", le="+Inf") == 3
    assert value(s, "geamqp_returned_messages_total") == 1
    assert value(s, "geamqp_consumers") == 1
    assert value(s, "geamqp_delivered_messages_total") == 2
    assert value(s, "geamqp_delivered_bytes_total") == 300
    assert value(s, "geamqp_redelivered_messages_total") == 1
    assert value(s, "geamqp_acks_total") == 1
    assert value(s, "geamqp_nacks_total") == 1
    assert value(s, "geamqp_rejects_total") == 1
    assert value(s, "geamqp_connection_blocked") == 0
    assert value(s, "geamqp_connection_blocked_seconds_total") == 1.25
    assert value(s, "geamqp_thread_callbacks_pending") == 7

    collector.consumer_cancelled(conn, 2, "orders", "ctag-1", False)
    collector.channel_closed(conn, 1, None)
    collector.connection_closed(conn, None)
    s = scrape(registry)
    assert value(s, "geamqp_connections") == 0
    assert value(s, "geamqp_connections_closed_total") == 1
    assert value(s, "geamqp_channels") == 0
    assert value(s, "geamqp_consumers") == 0


def test_connection_that_is_lost_then_given_up_leaves_the_gauge_at_zero() -> None:
    registry = CollectorRegistry()
    collector = PrometheusCollector(registry=registry, namespace="app")
    conn = ConnectionInfo("", "prod", "10.0.0.1", 5672)
    collector.connection_opened(conn)
    collector.connection_lost(conn, ConnectionResetError())
    collector.connection_recovery_failed(conn, ConnectionRefusedError())
    collector.connection_closed(conn, ConnectionRefusedError())
    s = scrape(registry)
    assert value(s, "app_connections", "unnamed", "prod") == 0
    assert value(s, "app_connection_recovery_failures_total", "unnamed", "prod") == 1
    assert value(s, "app_connections_closed_total", "unnamed", "prod") == 1


def test_label_cardinality_is_bounded() -> None:
    registry = CollectorRegistry()
    collector = PrometheusCollector(registry=registry, max_connection_labels=3)
    for i in range(50):
        conn = ConnectionInfo(f"worker-{i}", "/")
        collector.connection_opened(conn)
        collector.message_published(conn, 1, "", f"queue-{i}", 10)
    s = scrape(registry)
    names = {dict(labels)["connection"] for (name, labels) in s
             if name == "geamqp_published_messages_total"}
    assert names == {"worker-0", "worker-1", "worker-2", "other"}
    assert value(s, "geamqp_published_messages_total", "other") == 47
    assert not any("queue" in key for _, labels in s for key, _ in labels)


def test_two_collectors_in_one_registry_need_two_namespaces() -> None:
    registry = CollectorRegistry()
    PrometheusCollector(registry=registry)
    PrometheusCollector(registry=registry, namespace="other")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        PrometheusCollector(registry=registry)
    with pytest.raises(ValueError, match="max_connection_labels must be at least 1, not 0"):
        PrometheusCollector(registry=CollectorRegistry(), max_connection_labels=0)
