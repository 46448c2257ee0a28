"""Issue 12's table, replayed against a real `celeray up` stack.

Two stacks, one after the other, each on a private redis-server of its own: the default
settings (Redis without a password: any local user can write to it) and a Redis with a
password. Each has real workers, a real Ray head under supervisor, Flower with
credentials and the API under gunicorn. A user's run goes on while the attacks are made;
each test asserts what a user would check: nothing read or written outside the roots, no
code run, the message refused with its reason in the worker's log, and the user's rows
committed exactly once.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from celeray import reading
from celeray.celeryconfig import TASK_NAMES, make_client
from celeray.errors import LedgerError
from celeray.settings import Settings
from tests._attack import body, push, queue_of
from tests._slowloris import SlowClients, timed_request
from tests._stack import RedisServer, signing_env, wait_for
from tests.test_stack_up import Up

pytestmark = pytest.mark.stack

MARKER = "S3CR3T-" + secrets.token_hex(6)  # in the secret files: found nowhere else, ever
ROWS_PER_FILE, FILES = 4000, 6
FLIP_WAVES, LINKS_PER_WAVE, MIN_FLIPS = 4, 10, 200


class Target:
    """A `celeray up` stack on a private Redis, its pipelines, and an attacker's secrets.

    ``root/allowed`` is the pipeline file's folder, hence the only local root;
    ``root/outside`` holds a secret, a canary folder, and is where an attacker would write.
    """

    def __init__(self, root: Path, password: str | None) -> None:
        self.root = root
        self.allowed, self.outside = root / "allowed", root / "outside"
        self.redis = RedisServer(root / "redis", password=password)
        self.up = Up(root)
        self.up.env |= {"CELERAY_BROKER_URL": self.redis.url(0),
                        "CELERAY_RESULT_BACKEND": self.redis.url(1),
                        "CELERAY_PIPELINES": str(self.allowed / "pipelines.toml"),
                        # the test process's own key pair: Celery signs with one per process
                        **signing_env()}  # fmt: skip
        self._layout()
        started = self.up.celeray("up", timeout=300)
        if started.returncode != 0:
            self.redis.stop()
            raise AssertionError(started.stdout + started.stderr)

    def _layout(self) -> None:
        (self.outside / "canary").mkdir(parents=True)
        (self.outside / "canary" / "keep.txt").write_text("still here\n")
        # The secret is a CSV of the same shape, size and mtime as an allowed file, so that
        # only the roots checks can tell them apart.
        self.inside = self.allowed / "inside" / "data.csv"
        self.inside.parent.mkdir(parents=True)
        self.inside.write_text("id,name\n" + "".join(f"{i},inside-{i:06d}\n" for i in range(50)))
        self.secret = self.outside / "secret.csv"
        self.secret.write_text(
            "id,name\n" + "".join(f"{i},{MARKER[:13]}\n" for i in range(50))
        )
        assert self.secret.stat().st_size == self.inside.stat().st_size
        os.utime(self.secret, ns=(self.inside.stat().st_atime_ns, self.inside.stat().st_mtime_ns))
        landing = self.allowed / "landing"
        landing.mkdir()
        for f in range(FILES):
            rows = "".join(f"{f * ROWS_PER_FILE + i},row-{f}-{i}\n" for i in range(ROWS_PER_FILE))
            (landing / f"part-{f:02d}.csv").write_text("id,name\n" + rows)
        for folder in ("fliplanding", "hardlanding"):
            (self.allowed / folder).mkdir()
        (self.allowed / "pipelines.toml").write_text("\n".join(
            f'[pipelines.{name}]\nsource = "{src}/*.csv"\nsink = "lake/{name}"\n'
            'sql = "SELECT * FROM input"\n'
            for name, src in (("users", "landing"), ("flip", "fliplanding"),
                              ("hard", "hardlanding"))
        ))  # fmt: skip

    @property
    def settings(self) -> Settings:
        env = {**self.up.env, **json.loads((self.up.home / "stack-env.json").read_text())}
        return Settings(**{k.removeprefix("CELERAY_").lower(): v for k, v in env.items()
                           if k.startswith("CELERAY_") and k[8:].lower() in Settings.model_fields})

    @property
    def broker(self) -> redis.Redis:
        return self.redis.client(0)

    def log(self, program: str) -> str:
        return (self.up.home / "logs" / f"{program}.log").read_text(errors="replace")

    def run(self, pipeline: str, timeout: float = 180) -> dict[str, Any]:
        """Trigger ``pipeline`` over HTTP (following a run that holds it) until it ends."""
        code, doc = self.up.http("POST", f"/api/v1/pipelines/{pipeline}/runs")
        assert code in (202, 409), (code, doc)
        run_id = doc["run_id"]

        def ended() -> Any:
            code, doc = self.up.http("GET", f"/api/v1/runs/{run_id}")
            return doc if code == 200 and doc["state"] in ("SUCCESS", "FAILURE") else None

        return dict(wait_for(ended, timeout, f"run {run_id} of {pipeline}"))

    def stop(self) -> None:
        try:
            self.up.celeray("down", timeout=300)
        finally:
            self.redis.stop()


@pytest.fixture(scope="module", params=["default", "password"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Target]:  # fmt: skip
    password = None if request.param == "default" else "pw-" + secrets.token_hex(12)
    t = Target(tmp_path_factory.mktemp(f"attack-{request.param}"), password)
    try:
        yield t
    finally:
        t.stop()


def _sink_values(sink: Path) -> list[Any]:
    """Every value of every row committed to ``sink`` (its Parquet, readers' view)."""
    if not sink.exists():
        return []
    try:
        table = reading.dataset(sink.as_uri()).to_table()  # a Delta sink: its log's files
    except LedgerError:  # nothing committed there
        return []
    return [v for col in table.columns for v in col.to_pylist()]


def _files_holding(root: Path, needle: bytes, skip: tuple[Path, ...]) -> list[Path]:
    """Files under ``root`` (symlinks not followed) whose bytes contain ``needle``."""
    found = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_symlink() or path in skip or not path.is_file():
                continue
            with contextlib.suppress(OSError):
                if needle in path.read_bytes():
                    found.append(path)
    return found


def _old_job(t: Target, task_id: str) -> dict[str, Any]:
    """A batch message as it was before this issue: every field of its plan set by the
    sender. Each of them once decided what a worker read, wrote or ran."""
    return {
        "run_id": str(uuid.uuid4()), "pipeline": "users", "batch_id": "../../../../x",
        "files": [{"url": u, "read_url": u, "size": 10, "mtime": 1.0, "etag": None}
                  for u in ("file:///etc/shadow", t.secret.as_uri())],
        "sink": (t.outside / "attacker-sink").as_uri(),
        "staging_url": (t.outside / "canary").as_uri(),
        "plan": {"pipeline": "users", "format": "csv", "schema": None,
                 "sql": f"COPY (SELECT 'import os') TO '{t.outside}/pwn.py'; "
                        "SELECT * FROM input",
                 "transform": "pwn:f", "partition_by": [], "compression": "zstd",
                 "compression_level": None, "limits": {}, "local_roots": ["/"],
                 "storage_options": None, "threads": 1,
                 "ray_env": {"pip": [], "env_vars": {"PYTHONPATH": str(t.outside),
                                                     "RAY_marker": task_id}}},
        "prequarantined": {}, "commit_here": True, "lease": "x",
        "result": {"files": [{"url": "file:///etc/shadow"}], "quarantined": [],
                   "outputs": [{"path": "../../outside/moved"}], "rows_in": 1,
                   "rows_out": 1, "bytes_in": 1, "bytes_out": 1},
    }  # fmt: skip


def _new_job(files: list[str], batch_id: str | None = None,
             pipeline: str = "users") -> dict[str, Any]:  # fmt: skip
    """Today's message shape, naming inputs of the attacker's choice."""
    from celeray.ledger import batch_id_for

    entries = [{"url": u, "size": 10, "mtime": 1.0, "etag": None} for u in files]
    return {"pipeline": pipeline, "run_id": str(uuid.uuid4()),
            "batch_id": batch_id or batch_id_for(pipeline, entries), "files": entries}  # fmt: skip


def _crafted(t: Target, api_port: int) -> list[tuple[str, Any, str]]:
    """(what, batch message, the reason the worker must log) for rows 1-4 of the table."""
    landing = sorted((t.allowed / "landing").glob("*.csv"))
    return [
        ("every field of the old plan", _old_job(t, "old"), "unknown key(s)"),
        ("/etc/shadow and a file outside the roots",
         _new_job(["file:///etc/shadow", t.secret.as_uri()]), "is not named by pipeline"),
        ("an http URL and a cache chain",
         _new_job([f"http://127.0.0.1:{api_port}/metrics", "simplecache::file:///etc/shadow"]),
         "is not named by pipeline"),
        ("a batch id that climbs out", _new_job([landing[0].as_uri()], "../../../../x"),
         "is not a batch id"),
        ("a batch id its inputs do not give", _new_job([landing[0].as_uri()], "0" * 24),
         "is not the id its inputs give"),
        ("a pipeline the file does not define", _new_job([landing[0].as_uri()], None, "nope"),
         "unknown pipeline 'nope'"),
    ]  # fmt: skip


def _refusal(t: Target, task: str, task_id: str) -> str | None:
    """The worker's log line that refused ``task_id``, if it is there yet."""
    program = "worker-ray" if queue_of(task) == "ray" else "worker-io"
    for line in t.log(program).splitlines():
        if f"refused {task} message {task_id}" in line:
            return line
    return None


def test_crafted_messages_signed_with_the_stacks_key_are_refused(target: Target) -> None:
    """Rows 1-4, sent as a holder of the signing key (or a replayed, edited message) would:
    each batch task refuses each message naming what its pipeline file does not, logs why,
    and reads, writes and runs nothing, while a user's run commits every row once."""
    t = target
    client = make_client(t.settings)  # signs with the stack's key, as a key holder does

    def send(name: str, args: list[Any]) -> str:
        return str(client.send_task(name, args=args, queue=queue_of(name)).id)

    code, doc = t.up.http("POST", "/api/v1/pipelines/users/runs")
    assert code == 202, doc
    users_run = doc["run_id"]
    sent: list[tuple[str, str, str, str]] = []  # (what, task, task id, reason)
    for what, message, reason in _crafted(t, t.up.api_port):
        for task in ("stage_batch", "transform_batch", "commit_batch"):
            name = TASK_NAMES[task]
            sent.append((what, name, send(name, [message]), reason))
    for what, name, args, reason in (
        ("a pipeline name that climbs out", TASK_NAMES["start_run"], ["../../etc"], "pipeline"),
        ("a shell in the trigger", TASK_NAMES["start_run"], ["users", "$(id)"], "trigger"),
        ("a run id that climbs out", TASK_NAMES["watch_run"], ["../../x"], "run_id"),
    ):
        sent.append((what, name, send(name, args), reason))

    def all_refused() -> bool:
        return all(_refusal(t, name, tid) for _, name, tid, _ in sent)

    try:
        wait_for(all_refused, 90, "every crafted message refused in the worker logs")
    except TimeoutError:
        missing = [(w, n) for w, n, tid, _ in sent if not _refusal(t, n, tid)]
        raise AssertionError(f"not refused in the logs: {missing}") from None
    for what, name, tid, reason in sent:
        line = str(_refusal(t, name, tid))
        assert reason in line, (what, name, reason, line)

    def ended() -> Any:
        code, doc = t.up.http("GET", f"/api/v1/runs/{users_run}")
        return doc if code == 200 and doc["state"] in ("SUCCESS", "FAILURE") else None

    done = wait_for(ended, 240, "the user's run")
    assert done["state"] == "SUCCESS", done
    ids = reading.dataset((t.allowed / "lake" / "users").as_uri()).to_table(
        columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == FILES * ROWS_PER_FILE  # every row, exactly once
    assert not (t.outside / "attacker-sink").exists() and not (t.outside / "pwn.py").exists()
    assert (t.outside / "canary" / "keep.txt").read_text() == "still here\n"
    assert sorted(p.name for p in t.outside.iterdir()) == ["canary", "secret.csv"]
    leaks = _files_holding(t.root, MARKER[:13].encode(), skip=(t.secret,))
    assert leaks == [], leaks
    assert t.up.http("GET", "/api/v1/health")[0] == 200  # every worker still up
    client.close()


def test_unsigned_messages_and_flowers_async_apply_run_nothing(target: Target) -> None:
    """Row 1's other way in: any Flower user's async-apply of each celeray task, and an
    unsigned message pushed into Redis. Flower holds no key: the workers refuse both."""
    t = target
    base = f"http://127.0.0.1:{t.up.flower_port}"
    auth = ("admin", t.up.env["CELERAY_FLOWER_PASSWORD"])
    markers = {}
    for name in sorted(TASK_NAMES.values()):
        marker = f"flower-{uuid.uuid4().hex}"
        # the marker first: a worker's log shows only the start of a refused body
        args = [{"marker": marker, **_old_job(t, marker)}] if "batch" in name else [marker]
        req = json.dumps({"args": args}).encode()
        code, _ = _flower_post(base, f"/api/task/async-apply/{name}", req, auth)
        if code == 200:  # sent (unsigned): the worker must refuse it
            markers[marker] = name
        else:  # not even sent: Celery checks the arguments against the task's signature
            assert code == 500 and name in (TASK_NAMES["ray_status"], TASK_NAMES["reconcile"])
        unsigned = f"raw-{uuid.uuid4().hex}"
        push(t.broker, name, body([unsigned] if "batch" not in name else
                                  [{"marker": unsigned, **_old_job(t, unsigned)}], {}),
             "application/json")  # fmt: skip
        markers[unsigned] = name

    def logged() -> list[str]:
        text = t.log("worker-io") + t.log("worker-ray")
        return [m for m in markers if m not in text]

    wait_for(lambda: not logged(), 90, "each unsigned message in a worker's log")
    text = t.log("worker-io") + t.log("worker-ray")
    for marker in markers:
        at = text.index(marker)
        entry = text[text.rfind("\n[", 0, at):at]
        assert "untrusted content" in entry, entry[-2000:]
    backend = t.redis.client(1)
    assert not any(backend.exists(f"celery-task-meta-{m}") for m in markers)
    assert not (t.outside / "attacker-sink").exists() and not (t.outside / "pwn.py").exists()


def _flower_post(base: str, path: str, data: bytes, auth: tuple[str, str]) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    raw = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(f"{base}{path}", data=data, method="POST", headers={
        "Authorization": f"Basic {raw}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_pipeline_sql_that_reads_files_is_refused_at_validate(target: Target) -> None:
    """Row 6: `celeray validate` refuses file-reading SQL and a second statement, naming
    the pipeline and key; the running stack's own file is not touched."""
    t = target
    bad = t.root / "bad.toml"
    bad.write_text(
        f'[pipelines.leak]\nsource = "{t.allowed}/landing/*.csv"\nsink = "{t.allowed}/x"\n'
        "sql = \"SELECT *, (SELECT string_agg(content, '') FROM read_text('/etc/shadow'))"
        ' AS s FROM input"\n'
        f'[pipelines.two]\nsource = "{t.allowed}/landing/*.csv"\nsink = "{t.allowed}/y"\n'
        f"sql = \"COPY (SELECT 1) TO '{t.outside}/pwn.py'; SELECT * FROM input\"\n"
    )
    out = t.up.celeray("validate", str(bad))
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "pipelines.leak.sql" in text and "read_text" in text, text
    assert "pipelines.two.sql" in text, text
    assert not (t.outside / "pwn.py").exists()


def test_another_user_cannot_touch_rays_folders(target: Target) -> None:
    """Row 5: as `nobody`, Ray's session folder cannot be listed or written, nor can a
    file be put beside (or into) what the Ray workers import."""
    t = target
    temp = Path(json.loads((t.up.home / "stack-env.json").read_text())["CELERAY_RAY_TEMP_DIR"])
    assert temp.parent.stat().st_mode & 0o077 == 0
    sessions = sorted(temp.glob("session_2*"))
    assert sessions, list(temp.iterdir())
    unpacked = sorted(sessions[-1].glob("runtime_resources/**/ray_jobs/__init__.py"))
    tries = [("list", temp.parent), ("list", temp), ("list", sessions[-1]),
             ("create", sessions[-1] / "evil.py")]
    before = {}
    for path in unpacked[:1]:
        before[path] = hashlib.sha256(path.read_bytes()).hexdigest()
        tries += [("append", path), ("create", path.parent / "evil.py")]
    code = _NOBODY.replace("TRIES", repr([(k, str(p)) for k, p in tries]))
    out = subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", code],
                         capture_output=True, text=True, timeout=60, cwd="/")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {f"{k} {p}": "EACCES" for k, p in tries}
    for path, digest in before.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


_NOBODY = r"""
import errno, json, os
def attempt(kind, path):
    try:
        if kind == "list":
            os.listdir(path)
        else:
            with open(path, "a" if kind == "append" else "x") as fh:
                fh.write("\nraise SystemExit('changed by nobody')\n")
        return "done"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
print(json.dumps({f"{k} {p}": attempt(k, p) for k, p in TRIES}))
"""


def test_flipping_landing_symlinks_commit_no_byte_of_the_secret(target: Target) -> None:
    """Row 7: landing symlinks flipped between an allowed file and a secret of the same
    size and mtime, at least 200 flips while runs read them: every link ends committed or
    quarantined, and no byte of the secret reaches the table."""
    t = target
    landing = t.allowed / "fliplanding"
    stop = threading.Event()
    flips = [0]
    links: list[Path] = []

    def flipper() -> None:
        targets = (t.inside, t.secret)
        while not stop.is_set():
            for link in list(links):
                tmp = link.with_name(f".{link.name}.tmp")
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                    os.symlink(targets[flips[0] % 2], tmp)
                    os.replace(tmp, link)
                    flips[0] += 1
            time.sleep(0.002)

    thread = threading.Thread(target=flipper, daemon=True)
    thread.start()
    try:
        for wave in range(FLIP_WAVES):
            for i in range(LINKS_PER_WAVE):
                link = landing / f"link-{wave}-{i:02d}.csv"
                link.symlink_to(t.inside)
                links.append(link)
            done = t.run("flip")
            assert done["state"] == "SUCCESS", done
        during = flips[0]  # the flips made while the runs listed and read the links
    finally:
        stop.set()
        thread.join(10)
    ledger = t.allowed / "lake" / "flip" / "_celeray" / "ledger"
    entries = [json.loads(p.read_text()) for p in ledger.glob("[!.]*.json")]
    done_urls = {f["url"] for e in entries for f in e["inputs"]}
    quarantined = {q["url"] for e in entries for q in e["quarantined"]}
    assert {link.as_uri() for link in links} == done_urls | quarantined
    assert not done_urls & quarantined
    values = _sink_values(t.allowed / "lake" / "flip")
    assert not [v for v in values if MARKER[:13] in str(v)]
    assert during >= MIN_FLIPS, during


def test_a_hard_link_to_a_file_outside_the_roots_is_quarantined(target: Target) -> None:
    """Row 8: a hard link in the landing folder names the outside file's very inode; it is
    quarantined with its reason (CELERAY_ALLOW_HARD_LINKS is off), never read."""
    t = target
    link = t.allowed / "hardlanding" / "linked.csv"
    os.link(t.secret, link)
    done = t.run("hard")
    assert done["state"] == "SUCCESS", done
    result = done["result"]
    assert result["files_committed"] == 0 and result["files_quarantined"] == 1, result
    (record,) = result["quarantined"]
    assert record["url"] == link.as_uri() and "hard link" in record["error"], record
    assert not [v for v in _sink_values(t.allowed / "lake" / "hard") if MARKER[:13] in str(v)]


def test_slow_clients_do_not_hold_a_token_holders_trigger(target: Target) -> None:
    """Row 9: sockets that send one header line every 2 s, bounded in count and time,
    while a token holder's trigger answers within a second."""
    t = target
    auth = {"Authorization": f"Bearer {t.up.token}"}
    with SlowClients(t.up.api_port, 16, interval=2.0, seconds=10.0) as slow:
        time.sleep(3)  # every slow socket open and mid-header
        assert slow.open_now() >= 8
        seconds, status, answer = timed_request(t.up.api_port, "POST",
                                                "/api/v1/pipelines/users/runs", auth)  # fmt: skip
    assert status in (202, 409), (status, answer)
    assert seconds < 1.0, seconds


def test_ray_listens_on_loopback_and_its_workers_hold_no_secret(target: Target) -> None:
    """Row 10, and the environment of the processes where pipeline code runs."""
    t = target
    head = psutil.Process(t.up.program_pid("ray-head"))
    tree = [head, *head.children(recursive=True)]
    exposed, envs = [], []
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="inet"):
                ip = conn.laddr.ip.removeprefix("::ffff:")
                if conn.status == psutil.CONN_LISTEN and not (
                    ip.startswith("127.") or ip == "::1"
                ):
                    exposed.append(f"{proc.name()} {ip}:{conn.laddr.port}")
            if proc.pid != head.pid:
                envs.append(proc.environ())
    assert exposed == []
    secrets_ = [t.up.token, t.up.env["CELERAY_FLOWER_PASSWORD"], t.redis.url(0)]
    if t.redis.password:
        secrets_.append(t.redis.password)
    for env in envs:
        assert "CELERAY_BROKER_URL" not in env and "CELERAY_RESULT_BACKEND" not in env
        held = "\n".join(env.values())
        assert not [s for s in secrets_ if s in held]


def test_no_answer_takes_the_host_header(target: Target) -> None:
    """Row 11: a double slash, a trailing slash: no redirect, no Location, nothing that
    names the Host a client sent; errors are JSON."""
    t = target
    for method, path in (("POST", "/api/v1/pipelines/x//runs"), ("GET", "/api/v1//health"),
                         ("GET", "/api/v1/pipelines/"), ("POST", "//api/v1/pipelines/x/runs")):
        conn = http.client.HTTPConnection("127.0.0.1", t.up.api_port, timeout=10)
        try:
            conn.request(method, path, headers={"Host": "evil.example"})
            resp = conn.getresponse()
            answer = resp.read()
            headers = dict(resp.getheaders())
        finally:
            conn.close()
        assert not 300 <= resp.status < 400, (path, resp.status, headers)
        assert "evil" not in json.dumps(headers) and b"evil" not in answer, (path, headers)
        assert headers.get("Content-Type", "").startswith("application/json"), (path, headers)
