"""Celery accepts JSON only: a pickled task message is refused by a real worker, unrun."""

from __future__ import annotations

import uuid

import pytest

from celeray.celeryconfig import celery_config
from tests._stack import Stack, wait_for

pytestmark = pytest.mark.stack


def test_the_configuration_accepts_json_only(stack: Stack) -> None:
    conf = celery_config(stack.settings)
    assert conf["accept_content"] == conf["result_accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == "json"


def test_a_pickled_message_is_refused_and_never_runs(stack: Stack, tmp_path) -> None:
    stack.add_pipeline(
        "pickled", f'source = "{tmp_path.as_uri()}/in/*"\nsink = "{tmp_path.as_uri()}/out"'
    )
    task_id = str(uuid.uuid4())
    stack.client.send_task("tasks.start_run", args=["pickled"], task_id=task_id, queue="io",
                           serializer="pickle")  # fmt: skip
    log = stack.io.proc.log

    def refused() -> bool:
        text = log.read_text(errors="replace")
        return task_id in text or "untrusted content of type pickle" in text

    wait_for(refused, 60, "the io worker to refuse the pickled message")
    assert "untrusted content of type pickle" in log.read_text(errors="replace")
    assert stack.store.get(task_id) is None  # start_run never ran: no run record
    assert stack.client.AsyncResult(task_id).state == "PENDING"
