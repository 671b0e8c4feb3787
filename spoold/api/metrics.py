"""The API's own Prometheus metrics, counted by a plain ASGI middleware (so streamed bodies count as they pass)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "spoold_api_requests_total", "API requests by route, method and status", ["route", "method", "status"], registry=self.registry
        )
        self.bytes = Counter("spoold_api_bytes_total", "Request (in) and response (out) body bytes", ["direction"], registry=self.registry)
        self.latency = Histogram(
            "spoold_api_request_duration_seconds", "Time from a request's start to its last response byte", ["route", "method"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip


class MetricsMiddleware:
    """Counts every HTTP request by its route template (`/v1/batches/{batch_id}`, never the raw path: ids would explode the labels)."""

    def __init__(self, app: Any, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), "500"
        metrics = self.metrics

        async def counting_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                metrics.bytes.labels("in").inc(len(message.get("body", b"")))
            return message

        async def counting_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            elif message["type"] == "http.response.body":
                metrics.bytes.labels("out").inc(len(message.get("body", b"")))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            metrics.requests.labels(name, scope["method"], status).inc()
            metrics.latency.labels(name, scope["method"]).observe(time.perf_counter() - start)
