"""The API on a RabbitMQ broker: a trigger is queued (confirmed), the health check's broker
part, queue depths in /metrics by a passive declare; a vhost of the test's own, no workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from celeray import credentials
from celeray.api import create_app
from tests import _rabbit
from tests._stack import free_port
from tests.test_api import dbs, make_settings  # noqa: F401 - dbs is a fixture


@pytest.fixture
def vhost() -> Iterator[_rabbit.Vhost]:
    reason = _rabbit.missing()
    if reason:
        pytest.skip(f"RabbitMQ tests need a RabbitMQ and rabbitmqctl: {reason}")
    v = _rabbit.Vhost("celeray-api")
    try:
        yield v
    finally:
        v.delete()


def _samples(text: str) -> dict[str, float]:
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}  # fmt: skip


def test_trigger_health_and_metrics_on_rabbitmq(tmp_path: Path, dbs, vhost) -> None:  # noqa: F811
    settings = make_settings(tmp_path, broker_url=vhost.url)
    client: FlaskClient = create_app(settings).test_client()
    auth = {"Authorization": f"Bearer {credentials.api_token(settings)}"}

    queued = client.post("/api/v1/pipelines/flights/runs", headers=auth)
    assert queued.status_code == 202, queued.json
    samples = _samples(client.get("/metrics", headers=auth).text)
    assert samples["celeray_broker_up"] == 1
    assert samples['celeray_queue_length{queue="io"}'] == 1  # held by RabbitMQ, confirmed
    assert samples['celeray_queue_length{queue="ray"}'] == 0  # not declared yet: 0
    assert "celeray_unacked_messages" not in samples  # AMQP does not tell it

    health = client.get("/api/v1/health", headers=auth).json
    assert health["broker"]["ok"], health["broker"]
    assert not health["workers"]["ok"]  # none runs here
    assert ":guest@" not in str(health)  # no password in what the API says


def test_a_rabbitmq_broker_down_is_reported_not_hung(tmp_path: Path, dbs) -> None:  # noqa: F811
    url = _rabbit.amqp_url("v", port=free_port(), password="not-shown-pw")
    settings = make_settings(tmp_path, broker_url=url)
    client: FlaskClient = create_app(settings).test_client()
    auth = {"Authorization": f"Bearer {credentials.api_token(settings)}"}
    samples = _samples(client.get("/metrics", headers=auth).text)
    assert samples["celeray_broker_up"] == 0
    r = client.get("/api/v1/health", headers=auth)
    assert r.status_code == 503 and not r.json["broker"]["ok"]
    assert "not-shown-pw" not in r.text
