"""Signed task messages: a process that can write to the broker but holds no key cannot
make a worker act.

Against the session's real stack (a broker, an io and a ray worker, a Ray head): messages
are put straight into the broker's queues (on Redis with LPUSH, on RabbitMQ with a raw
publish under ``CELERAY_TEST_BROKER=amqp``), as an attacker with broker access would,
unsigned in each content type a worker might take, and signed with a key of the attacker's
own. Each is refused before any task code runs: no state in the result backend, no run
record, nothing in the sink, the refusal and its reason in the worker's log, and the worker
still alive. The same message signed with the stack's key runs. Flower, started without
the key as `celeray up` starts it, still lists the workers, and its async-apply runs nothing.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celeray.celeryconfig import RAY_QUEUE, TASK_NAMES
from tests._api_server import PIPELINES
from tests._attack import (
    EMBED,
    attacker_serializer,
    body,
    key_holder_serializer,
    push,
    queue_of,
    queued,
    signed,
)
from tests._data import SQL, write_landing
from tests._stack import REDIS_HOST, REDIS_PORT, VENV_BIN, Proc, Stack, free_port, wait_for

pytestmark = pytest.mark.stack

FLOWER_USER, FLOWER_PASSWORD = "watcher", "flower-pw-" + uuid.uuid4().hex[:8]


def _push(stack: Stack, task: str, payload: bytes, content_type: str | None,
          task_id: str | None = None) -> str:  # fmt: skip
    return push(stack.settings.broker_url, task, payload, content_type, task_id)


def _stack_serializer(stack: Stack) -> Any:
    s = stack.settings
    return key_holder_serializer(s.effective_signing_key, s.effective_signing_certificate)


def _pipeline(stack: Stack, name: str, root: Path, flights_df: Any) -> tuple[Path, Path]:
    landing, sink = root / "landing", root / "lake"
    write_landing(flights_df.iloc[:3000], landing, 1)
    stack.add_pipeline(name, "\n".join([
        f'source = "{landing.as_uri()}/*"', f'sink = "{sink.as_uri()}"', f'sql = "{SQL}"',
        f"[pipelines.{name}.schema]", 'time_hour = "timestamp[s, tz=UTC]"']))
    return landing, sink


def _log_of(stack: Stack, task: str) -> Path:
    return (stack.rayw if queue_of(task) == RAY_QUEUE else stack.io).proc.log


def _backend_has(stack: Stack, task_id: str) -> bool:
    backend = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=stack.dbs[1])
    return bool(backend.exists(f"celery-task-meta-{task_id}"))


def _wait_refused(stack: Stack, pushed: dict[str, tuple[str, str]]) -> None:
    """Until every pushed message's refusal is in its worker's log, with its reason."""

    missing: list[tuple[str, str]] = []

    def all_logged() -> bool:
        missing[:] = [(task, tid) for tid, (task, _) in pushed.items()
                      if tid not in _log_of(stack, task).read_text(errors="replace")]
        return not missing

    try:
        wait_for(all_logged, 60, "every pushed message's refusal in the worker logs")
    except TimeoutError:
        raise AssertionError(f"not in the worker logs: {missing}") from None
    for task_id, (task, reason) in pushed.items():
        text = _log_of(stack, task).read_text(errors="replace")
        at = text.index(task_id)
        entry = text[text.rfind("\n[", 0, at):at + 4000]
        assert reason in entry, (task, task_id, entry[:3000])


ALL_TASKS = sorted(TASK_NAMES.values())


def test_unsigned_and_foreign_signed_messages_are_refused(
    stack: Stack, tmp_path: Path, flights_df: Any
) -> None:
    """Every celeray task, pushed into Redis unsigned (JSON, raw text, no content type) or
    signed with an attacker's key (their own certificate, or one copying the stack's id):
    no task body runs, the worker logs the refusal and its reason, and stays up."""
    _, sink = _pipeline(stack, "sig_target", tmp_path, flights_df)
    own = attacker_serializer()
    forged = attacker_serializer(claim_id_of=(
        stack.settings.effective_signing_certificate))
    pushed: dict[str, tuple[str, str]] = {}
    for task in ALL_TASKS:
        for variant, reason in (
            ("json", "Refusing to deserialize untrusted content of type json"),
            ("text", "is not a signed task message"),
            ("none", "Unable to deserialize"),
            ("own", "Unknown certificate"),
            ("forged", "Bad signature"),
        ):
            task_id = str(uuid.uuid4())
            # A run of a real pipeline, a batch in its sink: what a message would ask for.
            args: list[Any] = ["sig_target"] if task == TASK_NAMES["start_run"] else []
            kwargs = {"marker": task_id}
            if variant in ("json", "text", "none"):
                ctype = {"json": "application/json", "text": "application/text", "none": None}
                _push(stack, task, body(args, kwargs), ctype[variant], task_id)
            else:
                serializer = own if variant == "own" else forged
                _push(stack, task, signed(serializer, args, kwargs), "application/data",
                      task_id)
            pushed[task_id] = (task, reason)
    _wait_refused(stack, pushed)
    wait_for(lambda: all(queued(stack.settings, q) == 0 for q in ("io", "ray")), 30,
             "empty queues")
    time.sleep(1)  # anything that had started would have a STARTED state by now
    ran = [(task, tid) for tid, (task, _) in pushed.items()
           if _backend_has(stack, tid) or stack.store.get(tid) is not None]
    assert ran == []
    assert not sink.exists()  # start_run of the real pipeline never planned a batch
    assert stack.io.proc.alive() and stack.rayw.proc.alive()


def test_a_message_signed_with_the_stacks_key_runs(
    stack: Stack, tmp_path: Path, flights_df: Any
) -> None:
    """The same LPUSH route, signed with the stack's key: start_run runs the whole run."""
    _, sink = _pipeline(stack, "sig_signed", tmp_path, flights_df)
    start = TASK_NAMES["start_run"]
    run_id = str(uuid.uuid4())
    body = signed(_stack_serializer(stack), ["sig_signed"], {"trigger": "signed-push"},
                   stamp=[start, run_id])
    _push(stack, start, body, "application/data", run_id)

    def summary() -> Any:
        # start_run's own "planned" answer may come first (a ready AsyncResult is cached:
        # ask a new one each time), then the run's summary.
        result = stack.client.AsyncResult(run_id)
        seen[:] = [result.state, result.result]
        doc = result.result if result.state == "SUCCESS" else None
        return doc if isinstance(doc, dict) and "files_committed" in doc else None

    seen: list[Any] = []
    try:
        done = wait_for(summary, 180, f"run {run_id}")
    except TimeoutError:
        raise AssertionError(f"run {run_id} did not end: {seen}") from None
    assert done["files_committed"] == 1, done
    assert sink.exists()


def test_a_sender_without_key_material_fails_at_start(tmp_path: Path) -> None:
    """A worker, and the CLI, started without the key: a clear error naming the setting
    and how to make the key; nothing is sent unsigned."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERAY_")}
    env.update({"CELERAY_HOME": str(tmp_path / "home"), "COLUMNS": "300",
                "CELERAY_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/13"})
    worker = subprocess.run([str(VENV_BIN / "celery"), "-A", "tasks", "worker", "-Q", "io"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert worker.returncode != 0
    assert "CELERAY_SIGNING_KEY" in worker.stderr and "celeray keys" in worker.stderr
    (tmp_path / "pipelines.toml").write_text('[pipelines.p]\nsource = "file:///x/*"\n'
                                             f'sink = "{tmp_path.as_uri()}/lake"\n')
    env["CELERAY_PIPELINES"] = str(tmp_path / "pipelines.toml")
    env["CELERAY_LOCAL_ROOTS"] = "/"
    cli = subprocess.run([str(VENV_BIN / "celeray"), "run", "p"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode != 0
    assert "CELERAY_SIGNING_KEY" in cli.stderr and "celeray keys" in cli.stderr, cli.stderr
    keys = subprocess.run([str(VENV_BIN / "celeray"), "keys"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert keys.returncode == 0, keys.stderr
    assert (tmp_path / "home" / "signing_key.pem").stat().st_mode & 0o077 == 0


@pytest.fixture
def flower(stack: Stack, tmp_path: Path) -> Iterator[str]:
    """Flower as `celeray up` runs it: monitor-only, basic auth, no signing key at hand."""
    port = free_port()
    conf = tmp_path / "flower_auth.py"
    conf.write_text(f"basic_auth = [{f'{FLOWER_USER}:{FLOWER_PASSWORD}'!r}]\n")
    env = {k: v for k, v in stack.env.items() if not k.startswith("CELERAY_SIGNING_")}
    env.update({"CELERAY_MONITOR_ONLY": "true",
                "CELERAY_SIGNING_KEY": str(tmp_path / "no-such-key.pem")})
    proc = Proc([str(VENV_BIN / "celery"), "-A", "tasks", "flower", "--address=127.0.0.1",
                 f"--port={port}", f"--conf={conf}"], env=env, log=tmp_path / "flower.log",
                cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.alive() and _http(base, "GET", "/healthcheck")[0] == 200, 90,
                 f"Flower on {port}: {proc.tail()}")
        yield base
    finally:
        proc.stop()


def _http(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    raw = base64.b64encode(f"{FLOWER_USER}:{FLOWER_PASSWORD}".encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}{path}", method=method, data=data, headers={
        "Authorization": f"Basic {raw}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text[:1] in (b"{", b"[") else text
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_flower_without_the_key_watches_but_runs_nothing(
    stack: Stack, flower: str, tmp_path: Path, flights_df: Any
) -> None:
    """Flower inspects the workers (control stays JSON), but what its async-apply sends is
    unsigned: the worker refuses it and nothing runs."""
    _, sink = _pipeline(stack, "sig_flower", tmp_path, flights_df)

    def workers() -> Any:
        code, doc = _http(flower, "GET", "/api/workers?refresh=1")
        return code == 200 and stack.io.name in doc and stack.rayw.name in doc

    wait_for(workers, 60, "Flower to list the workers")
    marker = f"flower-{uuid.uuid4().hex}"
    code, doc = _http(flower, "POST", f"/api/task/async-apply/{TASK_NAMES['start_run']}",
                      {"args": ["sig_flower"], "kwargs": {"trigger": marker}})
    assert code == 200, doc  # Flower sent it (unsigned): it is the worker that refuses it
    task_id = doc["task-id"]
    log = stack.io.proc.log
    wait_for(lambda: marker in log.read_text(errors="replace"), 60, "the io worker's refusal")
    text = log.read_text(errors="replace")
    entry = text[text.rfind("\n[", 0, text.index(marker)):text.index(marker)]
    assert "Refusing to deserialize untrusted content of type json" in entry, entry
    time.sleep(1)
    assert not _backend_has(stack, task_id) and stack.store.get(task_id) is None
    assert not sink.exists()


def test_signing_cost_per_message(stack: Stack) -> None:
    """Signing and verifying one start_run-sized message, with the stack's own key pair."""
    from celery.security.certificate import Certificate, CertStore

    serializer = _stack_serializer(stack)
    store = CertStore()
    store.add_cert(Certificate(stack.settings.effective_signing_certificate.read_text()))
    serializer._cert_store = store
    body = [["flights"], {"trigger": "api", "slot": 123, "slot_ttl": 300}, EMBED]
    n = 200
    started = time.perf_counter()
    signed = [serializer.serialize(body) for _ in range(n)]
    sign_us = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    for s in signed:
        assert serializer.deserialize(s) == body
    verify_us = (time.perf_counter() - started) / n * 1e6
    print(f"signing: sign {sign_us:.0f} us, verify {verify_us:.0f} us per message")
    assert sign_us + verify_us < 50_000  # far below one task's own work on any machine


def _settings(home: Path, **over: Any) -> Any:
    from celeray.settings import Settings

    return Settings(**{"home": home, "signing_key": None, "signing_certificate": None, **over})


def test_key_material_is_made_once_private_and_reused(tmp_path: Path) -> None:
    from celeray import credentials, signing

    settings = _settings(tmp_path / "home")
    key, cert = credentials.signing_keys(settings)
    first = (key.read_bytes(), cert.read_bytes())
    assert key.stat().st_mode & 0o777 == 0o600
    assert credentials.signing_keys(settings) == (key, cert)
    assert (key.read_bytes(), cert.read_bytes()) == first  # never replaced once made
    signing.check(signing.key_material(settings))
    cert.unlink()  # a lost certificate is made again from the key on disk
    credentials.signing_keys(settings)
    signing.check(signing.key_material(settings))


def test_unusable_key_material_is_refused_with_what_to_do(tmp_path: Path) -> None:
    from celeray import credentials, signing

    ours, theirs = _settings(tmp_path / "a"), _settings(tmp_path / "b")
    credentials.signing_keys(ours)
    credentials.signing_keys(theirs)
    with pytest.raises(signing.SigningError, match=r"CELERAY_SIGNING_KEY.*celeray keys"):
        signing.check(signing.key_material(_settings(tmp_path / "none")))
    mixed = _settings(tmp_path / "a", signing_certificate=theirs.effective_signing_certificate)
    with pytest.raises(signing.SigningError, match="is not the one of the key"):
        signing.check(signing.key_material(mixed))
    other_store = _settings(tmp_path / "a",
                            signing_cert_store=theirs.effective_signing_certificate)
    with pytest.raises(signing.SigningError, match="does not hold the certificate"):
        signing.check(signing.key_material(other_store))


def _key_failing_validation(home: Path) -> tuple[Path, Path]:
    """A key pair under ``home`` whose key's public half is the certificate's but whose
    private numbers are wrong: it parses, and validation refuses it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from celeray import credentials

    key_path, cert_path = credentials.signing_keys(_settings(home))
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    n = key.private_numbers()
    broken = rsa.RSAPrivateNumbers(
        p=n.p, q=n.q, d=n.d + 2, dmp1=n.dmp1, dmq1=n.dmq1, iqmp=n.iqmp,
        public_numbers=n.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    key_path.write_bytes(broken.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))  # fmt: skip
    return key_path, cert_path


def test_a_key_that_fails_validation_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """The quick check passes such a key (it does not validate it); the load that signs
    refuses it, with the file and what to do. In a process of its own, as Celery's
    serializers are global."""
    import subprocess
    import sys

    from celeray import signing

    key_path, _ = _key_failing_validation(tmp_path / "home")
    signing.check(signing.key_material(_settings(tmp_path / "home")))  # parsed: passes
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERAY_")}
    env["CELERAY_HOME"] = str(tmp_path / "home")
    made = subprocess.run(
        [sys.executable, "-c", "from celeray.celeryconfig import make_client\n"
         "from celeray.settings import Settings\nmake_client(Settings())"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode != 0
    assert f"the signing key {key_path} is not a usable RSA key" in made.stderr, made.stderr
    assert "celeray keys" in made.stderr


def test_an_api_whose_key_fails_validation_does_not_start(tmp_path: Path) -> None:
    """Each API worker loads the key before its first request: one that fails validation
    stops the API at start, naming the file, as missing key material does."""
    import subprocess

    key_path, cert_path = _key_failing_validation(tmp_path / "home")
    (tmp_path / "pipelines.toml").write_text(PIPELINES)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERAY_", "RAY_"))}
    env.update({"CELERAY_HOME": str(tmp_path / "home"),
                "CELERAY_PIPELINES": str(tmp_path / "pipelines.toml"),
                "CELERAY_SIGNING_KEY": str(key_path),
                "CELERAY_SIGNING_CERTIFICATE": str(cert_path),
                "CELERAY_BROKER_URL": f"redis://{REDIS_HOST}:{REDIS_PORT}/13"})
    api = subprocess.run(
        [str(VENV_BIN / "gunicorn"), "-c", "python:celeray.api.gunicorn_conf", "--bind",
         f"127.0.0.1:{free_port()}", "celeray.api:create_app()"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert api.returncode != 0
    assert f"the signing key {key_path} is not a usable RSA key" in api.stderr, api.stderr
    assert "Worker failed to boot" in api.stderr


def test_beat_signs_the_runs_it_schedules(stack: Stack, tmp_path: Path) -> None:
    """`celery -A tasks beat` with the stack's key: its scheduled start_run is accepted."""
    landing = tmp_path / "landing"
    landing.mkdir()
    stack.add_pipeline("sig_beat", f'source = "{landing.as_uri()}/*"\n'
                                   f'sink = "{(tmp_path / "lake").as_uri()}"\nschedule = 2')
    (tmp_path / "beat-home").mkdir()  # its own schedule file
    env = {**stack.env, "CELERAY_HOME": str(tmp_path / "beat-home")}
    beat = Proc([str(VENV_BIN / "celery"), "-A", "tasks", "beat", "-l", "INFO"], env=env,
                log=tmp_path / "beat.log", cwd=tmp_path)
    log = stack.io.proc.log
    before = log.read_text(errors="replace")
    try:
        def started() -> list[str]:
            new = log.read_text(errors="replace")[len(before):]
            return [line.split("[", 2)[2].split("]")[0] for line in new.splitlines()
                    if "Task tasks.start_run[" in line and "received" in line]

        run_ids = wait_for(started, 60, f"a start_run from beat: {beat.tail()}")
    finally:
        beat.stop()
    new = log.read_text(errors="replace")[len(before):]
    assert "untrusted content" not in new and "Can't decode" not in new, new[-3000:]

    def summary() -> Any:
        result = stack.client.AsyncResult(run_ids[0])
        return result.result if result.state == "SUCCESS" else None

    assert wait_for(summary, 60, f"run {run_ids[0]}")
    stack.add_pipeline("sig_beat", f'source = "{landing.as_uri()}/*"\n'
                                   f'sink = "{(tmp_path / "lake").as_uri()}"')  # unscheduled


def test_a_signed_body_is_not_accepted_as_another_task_or_id(
    stack: Stack, tmp_path: Path, flights_df: Any
) -> None:
    """Celery signs the body only: a copied signed body under another task name (or id) in
    the unsigned headers, or one signed without celeray's stamp, is refused, unrun."""
    _, sink = _pipeline(stack, "sig_copied", tmp_path, flights_df)
    serializer = _stack_serializer(stack)
    start, watch = TASK_NAMES["start_run"], TASK_NAMES["watch_run"]
    original = str(uuid.uuid4())
    pushed: dict[str, tuple[str, str]] = {}
    copied = signed(serializer, ["sig_copied"], {}, stamp=[start, original])
    for task in (watch, start):  # another name; the same name under a new id
        pushed[_push(stack, task, copied, "application/data")] = (task, "stamped for")
    unstamped = signed(serializer, ["sig_copied"], {})
    pushed[_push(stack, start, unstamped, "application/data")] = (start, "stamped for None")
    _wait_refused(stack, pushed)
    time.sleep(1)
    assert [t for t in pushed if _backend_has(stack, t) or stack.store.get(t)] == []
    assert not sink.exists()
