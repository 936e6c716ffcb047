"""``GET /metrics`` of ``pi0 serve``: Prometheus text format, one registry per server (no global state).

=========================================  ==========  ==================================================
metric                                     type        what
=========================================  ==========  ==================================================
``pi0_requests_total``                     counter     frames received on websocket connections
``pi0_replies_total``                      counter     requests answered with actions
``pi0_errors_total{kind}``                 counter     requests answered with an error text, by kind
``pi0_decode_failures_total``              counter     frames that were not msgpack-numpy within limits
``pi0_action_decode_failures_total{rule}`` counter     pi0-FAST replies whose tokens did not decode (zeros sent),
                                                       by decoding rule (strict, lenient, constrained)
``pi0_request_seconds``                    histogram   frame received -> reply sent (actions only)
``pi0_decode_seconds``                     histogram   decode + validation + input transforms per frame
``pi0_batch_size``                         histogram   requests per model call
``pi0_batch_seconds``                      histogram   model call + output transforms per batch
``pi0_open_connections``                   gauge       websocket connections open now
``pi0_active_connections``                 gauge       of those, with a request in flight or answered lately
``pi0_connections_refused_total{reason}``  counter     ``full`` (--max-connections), ``auth`` (API key)
``pi0_connections_closed_idle_total``      counter     closed after --idle-timeout-s without a frame
``pi0_ready``                              gauge       1 once every batch size is compiled
``pi0_record_saved_total``                 counter     ``--record`` files written
``pi0_record_dropped_total{reason}``       counter     ``queue_full`` or ``write_failed``
``pi0_record_omitted_keys_total``          counter     unknown keys left out of records (over the size cap)
``pi0_record_queue_bytes``                 gauge       bytes waiting to be written
=========================================  ==========  ==================================================

Error kinds: ``decode`` (not msgpack-numpy, over the element budget), ``invalid`` (does not fit the
embodiment or the protocol), ``out_of_range`` (a state too far outside the norm stats), ``non_finite`` (the
model produced NaN/inf actions), ``overloaded``, ``shutdown``, ``internal`` (a bug: details in the log).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from pi0cli.models.tokenizer import FAST_DECODE_RULES

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from pi0cli.serving.recording import Recorder

__all__ = ["CONTENT_TYPE_LATEST", "ERROR_KINDS", "ServerMetrics"]

ERROR_KINDS = ("decode", "invalid", "out_of_range", "non_finite", "overloaded", "shutdown", "internal")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _RecorderCollector(Collector):
    """Reads the recorder's counters at scrape time (the recorder knows nothing of Prometheus)."""

    def __init__(self, recorder: Recorder):
        self._recorder = recorder

    def collect(self) -> Iterator[Metric]:
        stats = self._recorder.stats()
        saved = CounterMetricFamily("pi0_record_saved", "--record files written")
        saved.add_metric([], stats["saved"])
        yield saved
        dropped = CounterMetricFamily("pi0_record_dropped", "--record requests not written, by reason",
                                      labels=["reason"])
        for reason in ("queue_full", "write_failed"):
            dropped.add_metric([reason], stats[reason])
        yield dropped
        omitted = CounterMetricFamily("pi0_record_omitted_keys",
                                      "unknown request keys left out of records (over the size cap)")
        omitted.add_metric([], stats["omitted_keys"])
        yield omitted
        queued = GaugeMetricFamily("pi0_record_queue_bytes", "--record bytes waiting to be written")
        queued.add_metric([], stats["queue_bytes"])
        yield queued


class ServerMetrics:
    """The metrics of one :class:`~pi0cli.serving.server.PolicyServer` in their own registry."""

    def __init__(self, *, open_connections: Callable[[], float], active_connections: Callable[[], float],
                 ready: Callable[[], float], recorder: Recorder | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("pi0_requests", "frames received on websocket connections", registry=r)
        self.replies = Counter("pi0_replies", "requests answered with actions", registry=r)
        self.errors = Counter("pi0_errors", "requests answered with an error text, by kind", ["kind"], registry=r)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        self.decode_failures = Counter("pi0_decode_failures", "frames that were not msgpack-numpy within limits",
                                       registry=r)
        self.action_decode_failures = Counter(
            "pi0_action_decode_failures", "pi0-FAST replies whose action tokens did not decode (zeros sent), by "
            "decoding rule", ["rule"], registry=r)
        for rule in FAST_DECODE_RULES:
            self.action_decode_failures.labels(rule)
        self.request_seconds = Histogram("pi0_request_seconds", "frame received to reply sent (actions only)",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.decode_seconds = Histogram("pi0_decode_seconds", "decode, validation and input transforms per frame",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("pi0_batch_size", "requests per model call", buckets=_BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("pi0_batch_seconds", "model call and output transforms per batch",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        Gauge("pi0_open_connections", "websocket connections open now", registry=r).set_function(open_connections)
        Gauge("pi0_active_connections", "connections with a request in flight or answered lately",
              registry=r).set_function(active_connections)
        self.refused = Counter("pi0_connections_refused", "connections refused, by reason", ["reason"], registry=r)
        for reason in ("full", "auth"):
            self.refused.labels(reason)
        self.closed_idle = Counter("pi0_connections_closed_idle", "connections closed after the idle timeout",
                                   registry=r)
        Gauge("pi0_ready", "1 once every batch size is compiled", registry=r).set_function(ready)
        if recorder is not None:
            r.register(_RecorderCollector(recorder))

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()
        if kind == "decode":
            self.decode_failures.inc()

    def action_decode(self, rule: str, failures: int) -> None:
        """A pi0-FAST reply decoded under ``rule`` with ``failures`` (0 or 1) failed chunks."""
        if failures:
            self.action_decode_failures.labels(rule).inc(failures)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        """The whole registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)
