"""Prometheus metrics of one server (its own registry, so that several apps in one process, as in
tests, never share counters). Exposed at GET /metrics in the Prometheus text format."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Requests, tokens, queue depth, batch size and latency histograms."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("vlmkit_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("vlmkit_prompt_tokens", "prompt tokens admitted (image tokens included)",
                                     registry=r)
        self.generation_tokens = Counter("vlmkit_generation_tokens", "tokens generated", registry=r)
        self.finished = Counter("vlmkit_finished_choices", "ends by reason: a choice's (eos, stop_string, "
                                "length, cancelled: its client left) or a whole request's (timeout, error, "
                                "cancelled before it started)", ["reason"], registry=r)
        self.queue_depth = Gauge("vlmkit_queue_depth", "requests waiting for a cache row", registry=r)
        self.active_rows = Gauge("vlmkit_active_rows", "cache rows decoding now", registry=r)
        self.batch_size = Histogram("vlmkit_batch_size", "rows per decode step", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.step_seconds = Histogram("vlmkit_decode_step_seconds", "time of one decode step", registry=r,
                                      buckets=_LATENCY)
        self.admit_seconds = Histogram("vlmkit_admit_seconds", "time of one admission: image encoding and "
                                       "prefill of the requests admitted between two decode steps", registry=r,
                                       buckets=_LATENCY)
        self.ttft_seconds = Histogram("vlmkit_time_to_first_token_seconds", "submission to first token",
                                      registry=r, buckets=_LATENCY)
        self.latency_seconds = Histogram("vlmkit_request_latency_seconds", "submission to last token (or cancel)",
                                         registry=r, buckets=_LATENCY)

    def first_token(self, seconds: float) -> None:
        self.ttft_seconds.observe(seconds)

    def step(self, rows: int, seconds: float) -> None:
        self.batch_size.observe(rows)
        self.active_rows.set(rows)
        self.step_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
