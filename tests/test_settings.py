"""Settings from the environment: defaults, derived values, refusals, redaction."""

import pytest
from pydantic import ValidationError

from celeray.settings import Settings, redact_url


def test_defaults_work_on_one_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RAY_ADDRESS", "CELERAY_RAY_ADDRESS", "CELERAY_RAY_PORT"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.effective_ray_address == "127.0.0.1:6380"
    assert s.effective_visibility_timeout > s.task_time_limit
    assert s.effective_state_url == s.result_backend


def test_environment_wins_and_ray_address_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERAY_RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6380")
    monkeypatch.setenv("CELERAY_MAX_FILE_BYTES", "1GiB")
    s = Settings()
    assert s.effective_ray_address == "10.0.0.5:6380"
    assert s.max_file_bytes == 1024**3


def test_visibility_timeout_must_exceed_the_time_limit() -> None:
    with pytest.raises(ValidationError, match="must exceed"):
        Settings(task_time_limit=100, visibility_timeout=50)


def test_passwords_are_masked_for_logs() -> None:
    assert redact_url("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("rediss://user:pw@h/1") == "rediss://user:***@h/1"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
