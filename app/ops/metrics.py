"""Prometheus metrics at GET /metrics (prometheus_client).

- ehc_http_requests_total{interaction, resource_type, status} and
  ehc_http_request_duration_seconds{interaction, resource_type}: every request; FHIR requests labelled with
  their interaction (read, search-type, create, $ehc-verify ...) and resource type, others with their endpoint.
- ehc_db_commands_total{command} and ehc_db_command_duration_seconds{command}: database round trips, counted by
  pymongo command monitoring (a listener registered once per process, before the first client connects).
- ehc_audit_backlog: events waiting in `_audit_pending` (app.audit.pending), counted when scraped (0.5 s at most;
  absent when the count took longer); ehc_audit_spooled_segments: this node's audit spool segments not shipped
  yet (app.audit.spool: one per process between shipments; more means shipments fail or a dead process's records
  wait for recovery).
- ehc_oauth_token_grants_total{grant_type, result}: answers of /oauth/token (result granted, or the HTTP status).
- ehc_qr_verifications_total{result}: `$ehc-verify` outcomes: valid, or the reason (app.ehc.token.VERIFY_REASONS:
  expired, replayed, bad-lifetime ...; anything else is counted as `other`).

Several worker processes (gunicorn): `ehc serve` sets PROMETHEUS_MULTIPROC_DIR to an empty folder before the
workers start, and every worker then answers /metrics with the sum over all of them (prometheus_client's
multiprocess mode). Without it, each process reports its own figures.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pymongo import monitoring

from app.ehc.token import VERIFY_REASONS
from app.ops.web import elapsed, mark_start, request_route

REQUESTS = Counter("ehc_http_requests", "HTTP requests answered", ["interaction", "resource_type", "status"])
LATENCY = Histogram("ehc_http_request_duration_seconds", "Time to answer a request, by FHIR interaction",
                    ["interaction", "resource_type"],
                    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
DB_COMMANDS = Counter("ehc_db_commands", "Database round trips (pymongo command monitoring)", ["command"])
DB_LATENCY = Histogram("ehc_db_command_duration_seconds", "Database command round-trip time", ["command"],
                       buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.0))
TOKEN_GRANTS = Counter("ehc_oauth_token_grants", "Token endpoint answers", ["grant_type", "result"])
QR_VERIFICATIONS = Counter("ehc_qr_verifications", "$ehc-verify outcomes", ["result"])

GRANT_TYPES = frozenset({"client_credentials", "authorization_code", "refresh_token"})
QR_RESULTS = frozenset({"valid", *VERIFY_REASONS})
_listener_lock = threading.Lock()
_listener_installed = False


def record_token_grant(grant_type: str, result: str) -> None:
    """One answer of the token endpoint: result `granted` or the error (HTTP status or OAuth error code)."""
    TOKEN_GRANTS.labels(grant_type if grant_type in GRANT_TYPES else "other", result).inc()


def record_qr_verification(result: str) -> None:
    """One `$ehc-verify`: `valid` or the reason it is not."""
    QR_VERIFICATIONS.labels(result if result in QR_RESULTS else "other").inc()


class _CommandCounter(monitoring.CommandListener):
    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._count(event.command_name, event.duration_micros)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._count(event.command_name, event.duration_micros)

    @staticmethod
    def _count(name: str, micros: int) -> None:
        DB_COMMANDS.labels(name).inc()
        DB_LATENCY.labels(name).observe(micros / 1e6)


def install_command_listener() -> None:
    """Count every database command of the clients created from now on (once per process)."""
    global _listener_installed
    with _listener_lock:
        if not _listener_installed:
            monitoring.register(_CommandCounter())
            _listener_installed = True


class AuditBacklog(Collector):
    """ehc_audit_backlog and ehc_audit_spooled_segments, read when scraped."""

    def __init__(self, svc: Any, timeout: float = 0.5) -> None:
        self.svc = svc
        self.timeout = timeout

    def collect(self) -> Iterator[GaugeMetricFamily]:
        import pymongo
        from pymongo.errors import PyMongoError

        from app.audit import pending
        from app.audit.chain import PENDING

        gauge = GaugeMetricFamily("ehc_audit_backlog", "Audit events not sealed into the chain yet")
        try:
            with pymongo.timeout(self.timeout):
                n = pending.count(self.svc.handle.db[PENDING])
        except PyMongoError:
            return
        gauge.add_metric([], n)
        yield gauge
        if self.svc.settings.audit_spool:  # records durable on this node's disk, not shipped yet
            from app.audit.spool import segments, spool_dir

            spooled = GaugeMetricFamily("ehc_audit_spooled_segments",
                                        "Audit spool segments on this node not shipped to the database yet")
            spooled.add_metric([], len(segments(spool_dir(self.svc.settings.data_dir, self.svc.handle.db.name))))
            yield spooled


def _registry(svc: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        for collector in (REQUESTS, LATENCY, DB_COMMANDS, DB_LATENCY, TOKEN_GRANTS, QR_VERIFICATIONS):
            registry.register(collector)
    if svc is not None:
        registry.register(AuditBacklog(svc))
    return registry


def metrics_view() -> Response:
    body = generate_latest(_registry(current_app.extensions.get("ehc")))
    return Response(body, mimetype=CONTENT_TYPE_LATEST.split(";")[0], headers={"Cache-Control": "no-store"})


def _before() -> None:
    mark_start()


def _after(response: Response) -> Response:
    if request.path == "/metrics":
        return response
    route = request_route()
    seconds = elapsed()
    REQUESTS.labels(route.interaction, route.resource_type, str(response.status_code)).inc()
    LATENCY.labels(route.interaction, route.resource_type).observe(seconds)
    if request.path == "/oauth/token" and request.method == "POST":
        record_token_grant(request.form.get("grant_type", ""),
                           "granted" if response.status_code == 200 else str(response.status_code))
    return response


def init_app(app: Flask) -> None:
    install_command_listener()
    app.before_request(_before)
    app.after_request(_after)
    app.add_url_rule("/metrics", "ehc_metrics", metrics_view, methods=["GET"])


def mark_process_dead(pid: int) -> None:
    """gunicorn child_exit hook in multiprocess mode: drop a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
