"""Load: 1,000 API triggers across 10 pipelines in a minute, beat firing every second meanwhile.

No run is lost (every accepted trigger ends SUCCESS), no file is committed twice, and Redis
is back to where it was once the keys' lifetimes have passed: every key celeray or Celery
leaves behind expires.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from tests._data import write_landing
from tests._stack import VENV_BIN, Proc, wait_for
from tests.faults._faultstack import LOCK_TTL, FaultStack, exactly_once
from tests.faults.conftest import record

pytestmark = [pytest.mark.stack, pytest.mark.faults]

PIPELINES = 10
TRIGGERS = 1_000
SECONDS = 60.0
# Kombu's own bookkeeping: the queues (lists, gone when empty), the unacked hash and its
# index (bounded by what is in flight), the bindings of the queues and their bookkeeping.
PERMANENT = ("io", "ray", "unacked", "unacked_index", "unacked_mutex", "_kombu.binding")


def _post(api: str, token: str, name: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"{api}/api/v1/pipelines/{name}/runs", method="POST", data=b"",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _keys_without_ttl(r: redis.Redis) -> list[str]:
    out = []
    for key in r.scan_iter(count=1000):
        name = key.decode()
        if r.ttl(key) == -1 and not name.startswith(PERMANENT):
            out.append(name)
    return out


def test_a_thousand_triggers_and_a_beat_every_second(
    fault_stack: FaultStack, flights_df, tmp_path: Path
):
    rng = random.Random(1000)
    names = [f"load{i}" for i in range(PIPELINES)]
    landings = {n: tmp_path / n for n in [*names, "beatload"]}
    files = {n: write_landing(flights_df.iloc[:4_000], p, 2) for n, p in landings.items()}
    for n, p in landings.items():
        extra = {"schedule": "1"} if n == "beatload" else {}
        fault_stack.add_pipeline(n, p, tmp_path / f"{n}-lake", **extra)
    servers = [redis.Redis(port=fault_stack.redis.port, db=db) for db in (0, 1)]
    for n in names:  # warm: the first run of each, so the baseline holds its keys' shapes
        fault_stack.settle(n)
    baseline = {"keys": sum(s.dbsize() for s in servers),
                "memory": int(servers[0].info("memory")["used_memory"])}

    beat = Proc([str(VENV_BIN / "celery"), "-A", "tasks", "beat", "-l", "INFO",
                 "-s", str(tmp_path / "beat-schedule")],
                env={**fault_stack.env, "CELERAY_RECONCILE_INTERVAL": "0"},
                log=tmp_path / "beat.log", cwd=tmp_path)
    token = (fault_stack.home / "api_token").read_text().strip()
    start = time.monotonic()
    answers: list[tuple[int, dict]] = []
    landed = 0

    def one(i: int) -> tuple[int, dict]:
        time.sleep(max(0.0, start + i * SECONDS / TRIGGERS - time.monotonic()))
        return _post(fault_stack.api, token, names[i % PIPELINES])

    store = fault_stack.store
    ended: dict[str, str] = {}  # run id -> final state, noted before its record expires

    def note_ends(futures: list) -> None:
        for f in futures:
            if f.done() and f.result()[0] == 202 and f.result()[1]["run_id"] not in ended:
                state = (store.get(f.result()[1]["run_id"]) or {}).get("state")
                if state in ("SUCCESS", "FAILURE"):
                    ended[f.result()[1]["run_id"]] = state

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = [pool.submit(one, i) for i in range(TRIGGERS)]
            while not all(f.done() for f in futures):  # new files land while the load runs
                time.sleep(2.0)
                n = rng.choice([*names, "beatload"])
                files[n] += write_landing(flights_df.iloc[rng.randrange(0, 300_000):][:2_000],
                                          landings[n], 1, start=100 + landed)
                landed += 1
                note_ends(futures)
            answers = [f.result() for f in futures]
        sent_for = time.monotonic() - start
    finally:
        beat.stop()
    beat_sends = beat.log.read_text().count("Sending due task celeray:beatload")

    codes = {c: sum(1 for a in answers if a[0] == c) for c in {a[0] for a in answers}}
    accepted = [a[1]["run_id"] for a in answers if a[0] == 202]
    assert set(codes) <= {202, 409}, codes
    assert len(answers) == TRIGGERS and beat_sends >= SECONDS * 0.8

    def all_ended() -> bool:
        note_ends(futures)
        return len(ended) == len(accepted)

    wait_for(all_ended, 120, "every accepted run to end", interval=1.0)
    states = list(ended.values())
    assert states.count("SUCCESS") == len(accepted), {s: states.count(s) for s in set(states)}
    for n in [*names, "beatload"]:
        fault_stack.settle(n)
    rows = {n: exactly_once(tmp_path / f"{n}-lake", files[n]) for n in files}
    dupes = sum(r["duplicates"] for r in rows.values())
    lost = sum(r["losses"] for r in rows.values())
    beat_runs = [r for r in (store.get(i) or {} for i in store.recent("beatload", 200))
                 if r.get("trigger") == "beat"]

    # Everything celeray and Celery left in Redis has a lifetime, and once it has passed
    # (results and run records: CELERAY_RESULT_EXPIRES; locks: the lock TTL) Redis is
    # back to its baseline.
    for s in servers:
        assert _keys_without_ttl(s) == []
    expires = int(fault_stack.env["CELERAY_RESULT_EXPIRES"])
    time.sleep(max(expires, LOCK_TTL) + 2)
    after = {"keys": sum(s.dbsize() for s in servers),
             "memory": int(servers[0].info("memory")["used_memory"])}
    record("load: 1,000 API triggers + beat 1/s", trials=1,
           expected=sum(r["expected"] for r in rows.values()),
           found=sum(r["found"] for r in rows.values()), duplicates=dupes, losses=lost,
           accepted=len(accepted), refused_409=codes.get(409, 0), beat_sends=beat_sends,
           beat_runs=len(beat_runs), seconds=round(sent_for, 1), redis_before=baseline,
           redis_after=after)
    assert (dupes, lost) == (0, 0), rows
    assert after["keys"] <= baseline["keys"] + 5, (baseline, after)
    assert after["memory"] <= baseline["memory"] + 2 * 1024**2, (baseline, after)
