"""``GET /metrics``: Prometheus text exposition, built fresh on every scrape.

All values are gauges read at scrape time from Redis (and a RabbitMQ broker): celeray keeps
no counters of its own that would survive a restart, and run records expire
(``CELERAY_RESULT_EXPIRES``), so "totals" would go down. Per pipeline: runs by state among
its last :data:`RECENT_RUNS`, the numbers of its last finished run, and its backlog (files
and bytes its newest listing left for later runs: ``max_files_per_run``,
``max_bytes_per_run``). Per queue: messages waiting (on Redis every priority list kombu
keeps for it; on RabbitMQ the ready messages a passive queue declare counts) and, on Redis,
messages delivered but not yet acknowledged (AMQP does not tell those: RabbitMQ's
management API and Prometheus plugin do). A part that is down is left out and its ``*_up``
gauge is 0.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Response
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from celeray.api._connections import PING_TIMEOUT, Connections, conns
from celeray.api._runview import record_state
from celeray.broker import amqp_queue_depths, is_amqp
from celeray.celeryconfig import IO_QUEUE, RAY_QUEUE
from celeray.errors import PipelineFileError
from celeray.pipelines import Pipeline
from celeray.run_record import FINAL_STATES

__all__ = ["RECENT_RUNS", "bp", "collect"]

log = logging.getLogger(__name__)

# The classic text format every Prometheus reads (prometheus_client's default names 1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
RECENT_RUNS = 50  # runs per pipeline counted by state: a day of half-hourly runs
STATES = ("QUEUED", "STARTED", "PROGRESS", "SUCCESS", "FAILURE")
_LAST_RUN = (  # metric suffix, run record field, help
    ("committed_files", "files_committed", "input files committed"),
    ("quarantined_files", "files_quarantined", "input files quarantined"),
    ("input_rows", "rows_in", "rows read"),
    ("output_rows", "rows_out", "rows written"),
    ("input_bytes", "bytes_in", "input bytes read"),
    ("output_bytes", "bytes_out", "Parquet bytes written"),
)

bp = Blueprint("metrics", __name__)


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"celeray_{name}", doc, labels=list(labels))


def _queue_keys(c: Connections, queue: str) -> list[str]:
    """The Redis lists kombu keeps for ``queue``: one per priority step."""
    options = c.client.conf.broker_transport_options or {}
    prefix = options.get("global_keyprefix", "")
    sep = options.get("sep", RedisChannel.sep)
    steps = options.get("priority_steps", PRIORITY_STEPS)
    return [prefix + (f"{queue}{sep}{pri}" if pri else queue) for pri in steps]


def _amqp_broker(c: Connections) -> list[Metric]:
    up = _gauge("broker_up", "1 when the broker answered this scrape")
    length = _gauge("queue_length", "messages waiting in the queue", ["queue"])
    try:
        depths = amqp_queue_depths(c.settings, (IO_QUEUE, RAY_QUEUE), timeout=PING_TIMEOUT)
    except Exception as exc:
        log.warning("metrics: broker unreachable: %s: %s", type(exc).__name__, exc)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    for queue, depth in depths.items():
        length.add_metric([queue], depth)
    return [up, length]


def _broker(c: Connections) -> list[Metric]:
    if is_amqp(c.settings.broker_url):
        return _amqp_broker(c)
    up = _gauge("broker_up", "1 when the broker answered this scrape")
    length = _gauge("queue_length", "messages waiting in the queue", ["queue"])
    unacked = _gauge("unacked_messages", "messages delivered to workers, not yet acknowledged")
    try:
        r = c.quick_redis(c.settings.broker_url)
        options = c.client.conf.broker_transport_options or {}
        pipe = r.pipeline(transaction=False)
        queues = (IO_QUEUE, RAY_QUEUE)
        for queue in queues:
            for key in _queue_keys(c, queue):
                pipe.llen(key)
        pipe.hlen(options.get("global_keyprefix", "")
                  + options.get("unacked_key", RedisChannel.unacked_key))  # fmt: skip
        counts = pipe.execute()
    except Exception as exc:
        log.warning("metrics: broker unreachable: %s: %s", type(exc).__name__, exc)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    steps = len(counts[:-1]) // len(queues)
    for i, queue in enumerate(queues):
        length.add_metric([queue], sum(counts[i * steps : (i + 1) * steps]))
    unacked.add_metric([], counts[-1])
    return [up, length, unacked]


def _runs(c: Connections, pipelines: dict[str, Pipeline]) -> list[Metric]:
    up = _gauge("state_store_up", "1 when the state store's Redis answered this scrape")
    runs = _gauge("runs", f"runs by state among the pipeline's last {RECENT_RUNS}",
                  ["pipeline", "state"])  # fmt: skip
    last = {
        suffix: _gauge(f"last_run_{suffix}", f"{doc} by the last finished run", ["pipeline"])
        for suffix, _, doc in _LAST_RUN
    }
    seconds = _gauge("last_run_duration_seconds", "wall time of the last finished run",
                     ["pipeline"])  # fmt: skip
    ended = _gauge("last_run_end_timestamp_seconds", "when the last finished run ended",
                   ["pipeline"])  # fmt: skip
    success = _gauge("last_run_success", "1 when the last finished run succeeded",
                     ["pipeline"])  # fmt: skip
    backlog = {
        unit: _gauge(f"backlog_{unit}", f"{unit} of new input the newest listing left for "
                     "later runs (max_files_per_run, max_bytes_per_run)", ["pipeline"])
        for unit in ("files", "bytes")
    }
    try:
        c.store.ping()
        for name in pipelines:
            counts = dict.fromkeys(STATES, 0)
            final: dict[str, Any] | None = None
            listed = False
            for run_id in c.store.recent(name, RECENT_RUNS):
                record = c.store.get(run_id)
                if record is None:
                    continue
                if not listed and "backlog_files" in record:  # the newest listing's
                    listed = True
                    for unit, gauge in backlog.items():
                        gauge.add_metric([name], int(record.get(f"backlog_{unit}") or 0))
                state = record_state(record)
                counts[state] = counts.get(state, 0) + 1
                if final is None and state in FINAL_STATES:
                    final = record
            for state, n in counts.items():
                runs.add_metric([name, state], n)
            if final is None:
                continue
            for suffix, field, _ in _LAST_RUN:
                last[suffix].add_metric([name], int(final.get(field) or 0))
            start = float(final.get("started_at") or final.get("created_at") or 0)
            end = float(final.get("finished_at") or 0)
            if start and end:
                seconds.add_metric([name], max(end - start, 0.0))
            if end:
                ended.add_metric([name], end)
            success.add_metric([name], 1 if final.get("state") == "SUCCESS" else 0)
    except Exception as exc:
        log.warning("metrics: state store unreachable: %s: %s", type(exc).__name__, exc)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    return [up, runs, *last.values(), seconds, ended, success, *backlog.values()]


def collect(c: Connections) -> list[Metric]:
    """Every metric family, read now."""
    alive = _gauge("up", "1: the celeray API answers")
    alive.add_metric([], 1)
    valid = _gauge("pipeline_file_valid", "1 when the pipeline file loads without problems")
    try:
        pipelines = c.pipelines()
        valid.add_metric([], 1)
    except PipelineFileError:
        pipelines = {}
        valid.add_metric([], 0)
    count = _gauge("pipelines", "pipelines in the pipeline file")
    count.add_metric([], len(pipelines))
    return [alive, valid, count, *_broker(c), *_runs(c, pipelines)]


class _Snapshot:
    """A prometheus_client collector over metric families already read."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


@bp.get("/metrics")
def metrics() -> Response:
    """The metrics in Prometheus text format (bearer token required, like the API)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(collect(conns())))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE)
