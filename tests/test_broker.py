"""The broker chosen by URL: what celeray configures on Redis and on RabbitMQ (pure)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from celeray.broker import QUORUM_DELIVERY_LIMIT, broker_kind, is_amqp
from celeray.celeryconfig import IO_QUEUE, RAY_QUEUE, celery_config
from celeray.settings import Settings, redact_url

AMQP = "amqp://celeray:s3cret-pw@rabbit.example:5672/celeray"


@pytest.mark.parametrize(("url", "kind"), [
    ("redis://127.0.0.1:6379/0", "redis"), ("rediss://:p@h:6380/0", "redis"),
    ("amqp://u:p@h:5672/v", "amqp"), ("AMQPS://u:p@h/v", "amqp"),
])  # fmt: skip
def test_the_scheme_names_the_broker(url: str, kind: str) -> None:
    assert broker_kind(url) == kind
    assert is_amqp(url) == (kind == "amqp")


@pytest.mark.parametrize("url", ["sqs://", "pyamqp://h//", "memory://", "127.0.0.1:6379"])
def test_other_brokers_are_refused_by_name(url: str) -> None:
    with pytest.raises(ValueError, match=r"CELERAY_BROKER_URL.*redis://, rediss://, amqp://"):
        Settings(broker_url=url)


def test_results_and_run_state_stay_on_redis() -> None:
    with pytest.raises(ValueError, match=r"CELERAY_RESULT_BACKEND .* must be a redis://"):
        Settings(broker_url=AMQP, result_backend="rpc://")
    with pytest.raises(ValueError, match=r"CELERAY_STATE_URL .*amqp://celeray:\*\*\*@"):
        Settings(broker_url=AMQP, state_url=AMQP)


def test_celeray_counts_poison_below_the_queues_delivery_limit() -> None:
    Settings(broker_url=AMQP, max_deliveries=QUORUM_DELIVERY_LIMIT - 1)
    with pytest.raises(ValueError, match="CELERAY_MAX_DELIVERIES"):
        Settings(broker_url=AMQP, max_deliveries=QUORUM_DELIVERY_LIMIT)
    Settings(max_deliveries=QUORUM_DELIVERY_LIMIT + 5)  # Redis has no such limit


def test_redis_broker_config_is_unchanged() -> None:
    conf = celery_config(Settings(task_time_limit=100))
    assert conf["broker_transport_options"] == {
        "visibility_timeout": 700, "unacked_restore_interval": 10, "unacked_restore_throttle": 1}
    assert [(q.name, q.queue_arguments) for q in conf["task_queues"]] == [
        (IO_QUEUE, None), (RAY_QUEUE, None)]
    assert "broker_native_delayed_delivery_queue_type" not in conf


def test_rabbitmq_config_quorum_queues_confirms_and_delayed_delivery() -> None:
    conf = celery_config(Settings(broker_url=AMQP, task_time_limit=100))
    # No visibility timeout on the broker (it means nothing there); publishes confirmed.
    assert conf["broker_transport_options"] == {"confirm_publish": True}
    queues = {q.name: q for q in conf["task_queues"]}
    assert set(queues) == {IO_QUEUE, RAY_QUEUE}
    for name, q in queues.items():
        assert q.durable and not q.auto_delete
        assert q.queue_arguments == {"x-queue-type": "quorum",
                                     "x-delivery-limit": QUORUM_DELIVERY_LIMIT}
        # native delayed delivery skips direct exchanges: countdowns need a topic one
        assert (q.exchange.name, q.exchange.type, q.routing_key) == (name, "topic", name)
    assert conf["worker_detect_quorum_queues"] is True
    assert conf["broker_native_delayed_delivery_queue_type"] == "quorum"
    # As on Redis: ack late, give back on a lost worker, one message at a time.
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["result_backend"].startswith("redis://")
    assert "broker_use_ssl" not in conf


def test_queue_arguments_do_not_follow_settings() -> None:
    """A quorum queue's arguments are fixed when it is made: a worker declaring it with
    others is refused, so no setting may change them."""
    a = celery_config(Settings(broker_url=AMQP, task_time_limit=10, max_deliveries=1))
    b = celery_config(Settings(broker_url=AMQP, task_time_limit=5000, max_deliveries=9))
    assert [q.queue_arguments for q in a["task_queues"]] == \
        [q.queue_arguments for q in b["task_queues"]]


def test_amqps_verifies_the_server(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    conf = celery_config(Settings(broker_url=AMQP.replace("amqp:", "amqps:"),
                                  amqp_tls_ca_file=ca))  # fmt: skip
    assert conf["broker_use_ssl"] == {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": str(ca)}


def test_rabbitmq_passwords_are_masked() -> None:
    assert redact_url(AMQP) == "amqp://celeray:***@rabbit.example:5672/celeray"
    assert "s3cret" not in redact_url(AMQP.replace("amqp:", "amqps:"))


def test_up_supervises_redis_for_the_results_not_for_rabbitmq(tmp_path: Path) -> None:
    from celeray import stack

    s = Settings(broker_url=AMQP, result_backend="redis://127.0.0.1:6390/1")
    assert stack._redis_to_supervise(s) == "redis://127.0.0.1:6390/1"
    assert stack._redis_to_supervise(Settings()) == Settings().broker_url


def test_flower_gets_the_management_api_in_its_private_conf(tmp_path: Path) -> None:
    from celeray import stack

    api = "http://admin:mgmt-pw@127.0.0.1:15672/api/"
    s = Settings(home=tmp_path, broker_url=AMQP, broker_api_url=api, flower_password="fp")
    stack._write_flower_conf(s, tmp_path)
    conf = tmp_path / stack.FLOWER_CONF
    assert (conf.stat().st_mode & 0o777) == 0o600
    assert f"broker_api = {api!r}" in conf.read_text()
    assert "mgmt-pw" not in repr(s)  # a secret: not in the settings' repr or logs
