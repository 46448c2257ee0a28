"""The quarantine, files and run-history routes on a real ledger (and the real Redis the
API needs), with the fixtures of ``tests.test_api``."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from celeray.ledger import Ledger, quarantine_key
from celeray.pipelines import load_pipelines
from celeray.settings import Settings
from tests import test_api as base
from tests.test_quarantine import _bad, commit

# test_api's fixtures: the real Redis databases, settings, the app, its client, the token
_no_celeray_environment = base._no_celeray_environment
dbs, settings, app, client, auth = base.dbs, base.settings, base.app, base.client, base.auth

BASE = "/api/v1/pipelines/flights"


def _sink(settings: Settings) -> str:
    return load_pipelines(settings.pipelines, **settings.pipeline_rules())["flights"].sink


def _setup(settings: Settings) -> tuple[str, str, str]:
    sink = _sink(settings)
    good, bad = f"{sink}-landing/a.csv", f"{sink}-landing/b.csv"
    batch = commit(Ledger(sink), "r1", [good], [_bad(bad), _bad(f"{sink}-landing/c.jsonl",
                                                               "schema")])  # fmt: skip
    return good, bad, batch


def test_quarantine_list_show_replay_dismiss(
    settings: Settings, client: FlaskClient, auth: dict[str, str]
) -> None:
    _, bad, batch = _setup(settings)
    r = client.get(f"{BASE}/quarantine", headers=auth)
    assert r.status_code == 200
    assert [i["status"] for i in r.json["items"]] == ["quarantined", "quarantined"]
    r = client.get(f"{BASE}/quarantine", query_string={"kind": "schema"}, headers=auth)
    assert [i["kind"] for i in r.json["items"]] == ["schema"]
    r = client.get(f"{BASE}/quarantine", query_string={"glob": "b.*"}, headers=auth)
    assert [i["url"] for i in r.json["items"]] == [bad]
    key = r.json["items"][0]["key"]
    assert key == quarantine_key(bad)
    r = client.get(f"{BASE}/quarantine/{key}", headers=auth)
    assert (r.status_code, r.json["batch_id"], r.json["reason"]) == (200, batch, "bad parse")
    r = client.post(f"{BASE}/quarantine/{key}/replay", headers=auth)
    assert r.status_code == 200 and r.json["status"] == "replay_pending"
    assert r.json["decision"]["by"] == "api" and r.json["decision"]["at"] > 0
    assert bad not in Ledger(_sink(settings)).done_inputs()
    r = client.post(f"{BASE}/quarantine/{key}/dismiss", headers=auth)
    assert r.json["status"] == "dismissed"
    r = client.get(f"{BASE}/quarantine", headers=auth)
    assert bad not in [i["url"] for i in r.json["items"]]
    r = client.get(f"{BASE}/quarantine", query_string={"all": "1"}, headers=auth)
    assert bad in [i["url"] for i in r.json["items"]]


def test_quarantine_errors(settings: Settings, client: FlaskClient, auth: dict[str, str]) -> None:
    good, bad, _ = _setup(settings)
    key = quarantine_key(bad)
    for key_given in (quarantine_key(good), "x" * 24, "../etc"):
        for suffix, method in (("", "GET"), ("/replay", "POST"), ("/dismiss", "POST")):
            r = client.open(f"{BASE}/quarantine/{key_given}{suffix}", method=method,
                            headers=auth)  # fmt: skip
            assert r.status_code == 404, (key_given, suffix)
    assert client.post(f"/api/v1/pipelines/nope/quarantine/{key}/replay",
                       headers=auth).status_code == 404  # fmt: skip
    r = client.get(f"{BASE}/quarantine", query_string={"kind": "a/b"}, headers=auth)
    assert r.status_code == 400
    client.post(f"{BASE}/quarantine/{key}/replay", headers=auth)
    commit(Ledger(_sink(settings)), "r2", [bad], [])
    r = client.post(f"{BASE}/quarantine/{key}/replay", headers=auth)
    assert r.status_code == 409 and "committed" in r.json["error"]
    assert client.post(f"{BASE}/quarantine/{key}/replay").status_code == 401


def test_files_and_runs(settings: Settings, client: FlaskClient, auth: dict[str, str]) -> None:
    good, bad, batch = _setup(settings)
    r = client.get(f"{BASE}/files", headers=auth)
    assert r.status_code == 200
    found: dict[str, Any] = {f["url"]: f for f in r.json["files"]}
    assert found[good]["state"] == "committed" and found[good]["batch_id"] == batch
    assert found[good]["outputs"] == [f"part-{batch}-0.parquet"]
    assert found[bad]["state"] == "quarantined"
    r = client.get(f"{BASE}/files", query_string={"glob": "a.csv"}, headers=auth)
    assert [f["url"] for f in r.json["files"]] == [good]
    r = client.get(f"{BASE}/runs", headers=auth)
    assert r.status_code == 200
    [run] = r.json["runs"]
    assert (run["run_id"], run["batches"], run["files_committed"]) == ("r1", 1, 1)
    assert run["files_quarantined"] == 2
    for bad_limit in ("0", "x", "10001"):
        r = client.get(f"{BASE}/runs", query_string={"limit": bad_limit}, headers=auth)
        assert r.status_code == 400
    assert client.get(f"{BASE}/files").status_code == 401
    assert client.get("/api/v1/pipelines/nope/files", headers=auth).status_code == 404
