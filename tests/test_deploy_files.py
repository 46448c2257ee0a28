"""docker-compose.yml and supervisord.conf describe the same stack.

There is no Docker engine here, so the compose file is held to the supervisor file, which
the stack tests run for real: the same programs, the same commands, the same settings.
"""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import yaml

from celeray.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = ("redis", "ray-head", "worker-io", "worker-ray", "beat", "flower", "api")
# The options that make a program what it is; addresses, ports and sizes may differ.
IDENTITY = {"-A", "-Q", "-P", "--head", "--block", "--include-dashboard", "--workers"}


def _supervisor() -> dict[str, str]:
    conf = configparser.RawConfigParser(inline_comment_prefixes=(";",), strict=True)
    conf.read(ROOT / "supervisor" / "supervisord.conf")
    return {
        s.removeprefix("program:"): conf.get(s, "command")
        for s in conf.sections()
        if s.startswith("program:")
    }


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _shape(command: str) -> tuple[list[str], dict[str, str]]:
    """The program and positional words, and the identity options with their values."""
    tokens = shlex.split(command)
    if tokens[:2] == ["nice", "-n"]:  # a CPU priority under supervisor: no other program
        tokens = tokens[3:]
    words, options = [Path(tokens[0]).name], {}
    i = 1
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("-"):
            name, _, value = tok.partition("=")
            if not value and i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
                value = tokens[i + 1]
                i += 1
            if name in IDENTITY:
                options[name] = value
        else:
            words.append(tok)
        i += 1
    return words, options


def test_every_program_is_a_service_with_the_same_command() -> None:
    programs, services = _supervisor(), _compose()["services"]
    assert set(programs) == set(PROGRAMS)
    assert set(PROGRAMS) <= set(services)
    for name in PROGRAMS:
        if name == "redis":
            continue  # the official image runs its own redis-server
        want = _shape(programs[name])
        got = _shape(services[name]["command"])
        assert got == want, f"{name}: compose {got} != supervisor {want}"


def test_workers_stop_gracefully_in_both() -> None:
    conf = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    conf.read(ROOT / "supervisor" / "supervisord.conf")
    services = _compose()["services"]
    for name in ("worker-io", "worker-ray"):
        section = f"program:{name}"
        assert conf.get(section, "stopsignal") == "TERM"
        assert conf.get(section, "killasgroup") == "true"
        assert conf.get(section, "stopasgroup") == "false"
        assert "STOP_WAIT" in conf.get(section, "stopwaitsecs")
        grace = int(services[name]["stop_grace_period"].rstrip("s"))
        assert grace >= Settings().task_time_limit
        assert services[name]["stop_signal"] == "SIGTERM"


def test_compose_uses_only_settings_celeray_knows() -> None:
    fields = {f.upper() for f in Settings.model_fields}
    services = _compose()["services"]
    for name, service in services.items():
        for var in (service.get("environment") or {}):
            if var.startswith("CELERAY_"):
                assert var.removeprefix("CELERAY_") in fields, f"{name}: unknown setting {var}"


def test_redis_persists_and_never_evicts() -> None:
    command = _compose()["services"]["redis"]["command"]
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert "--maxmemory-policy noeviction" in _supervisor()["redis"]
