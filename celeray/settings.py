"""The one typed settings object, read from ``CELERAY_*`` environment variables.

Every default works on one machine with Redis on 127.0.0.1:6379; each says why it is what
it is. The broker may be RabbitMQ instead (``amqp://``, ``amqps://``); results and run
state stay on Redis. Secrets (the API token, passwords inside Redis and RabbitMQ URLs) are
``SecretStr`` or stay in URLs that :func:`redact_url` masks before anything is logged.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from celeray.sizes import DEFAULT_MAX_COLUMNS, parse_size

__all__ = ["Settings", "get_settings", "redact_url"]

Size = Annotated[int, BeforeValidator(parse_size)]


def _path_list(value: Any) -> Any:
    """``"/a:/b"`` (os.pathsep-separated, like PATH) or a list, as a tuple of paths."""
    if isinstance(value, str):
        value = [p for p in value.split(os.pathsep) if p.strip()]
    return value


PathList = Annotated[tuple[Path, ...], NoDecode, BeforeValidator(_path_list)]

# Named defaults, each with the reason it has this value.
DEFAULT_HOME = Path(".celeray")  # beside the project, like .venv: one stack per checkout
DEFAULT_PIPELINES = Path("pipelines.toml")  # the file `celeray validate` checks by default
DEFAULT_API_PORT = 8000  # gunicorn's customary port
DEFAULT_FLOWER_PORT = 5555  # Flower's own default, so its docs apply as written
DEFAULT_FLOWER_USER = "admin"  # the password, not the name, is the secret (generated)
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"  # the Redis every dev machine runs
DEFAULT_RESULT_BACKEND = "redis://127.0.0.1:6379/1"  # same server, own db: flushable apart
DEFAULT_RAY_PORT = 6380  # Ray's own default 6379 is Redis's port
DEFAULT_TASK_TIME_LIMIT = 1800  # a batch of 256 MiB takes seconds; 30 min means it hangs
DEFAULT_VISIBILITY_MARGIN = 600  # redelivery must never start while the task still runs
DEFAULT_RUN_LOCK_TTL = 120  # a dead run's lock frees within 2 min; live tasks renew it
DEFAULT_RESULT_EXPIRES = 7 * 24 * 3600  # runs stay visible a week, then Redis forgets them
DEFAULT_MAX_FILE_BYTES = 10 * 1024**3  # a landing file over 10 GiB is likely a mistake
DEFAULT_MAX_DECOMPRESSED_BYTES = 50 * 1024**3  # stops bombs; real data rarely inflates 5x+
# pyarrow's CSV/JSON block must hold a row, and its reader keeps up to 32 blocks read
# ahead: 4 MiB bounds that at 128 MiB per reading task (16 MiB let a bomb of rows reach
# +350 MiB), is 4x pyarrow's own block default and far longer than real rows.
DEFAULT_MAX_ROW_BYTES = 4 * 1024**2
DEFAULT_ZSTD_MAX_WINDOW = 128 * 1024**2  # zstd's own default limit (window log 27)
DEFAULT_RAY_MAX_IN_FLIGHT = 0  # 0 = twice the cluster's CPUs: keeps cores fed, memory bounded
DEFAULT_MIN_FREE_MEMORY = 0.10  # below 10% free memory the dispatcher waits before submitting
DEFAULT_UNIT_BYTES = 32 * 1024**2  # small files grouped to ~32 MiB per Ray task (>100 ms work)
DEFAULT_RECONCILE_INTERVAL = 300  # s; a Redis that lost its queues is noticed within 5 min
DEFAULT_MAX_DELIVERIES = 3  # a batch whose worker died this often is quarantined as poison
# No roots given: local sources and sinks must lie in the pipeline file's own folder, where
# `celeray demo` (and a project) keeps landing/ and lake/. Anything else is listed on purpose.
DEFAULT_LOCAL_ROOTS: tuple[Path, ...] = ()
DEFAULT_ALLOW_CHAINED_URLS = False  # `a::b` can cache remote data locally and reach other FSs
# A hard link is the same file under another name: one in the landing folder to a file
# outside the roots cannot be told from the path, so hard-linked inputs are quarantined
# unless the landing folder's writers are trusted (see ray_jobs._open_local).
DEFAULT_ALLOW_HARD_LINKS = False
# Requests per minute per client (token, or address when unauthenticated). A load test of
# 1,000 triggers in a minute from one client, each followed by a few status polls, stays
# under 6,000; a runaway script or a token-guessing loop does not.
DEFAULT_API_RATE_LIMIT = 6000
# Task messages are signed with this key pair, kept in the home beside the API token and
# made by `celeray up` / `celeray keys`; the certificate is public, the key is not.
SIGNING_KEY_FILE = "signing_key.pem"
SIGNING_CERT_FILE = "signing_cert.pem"
DEFAULT_SIGNING_DIGEST = "sha256"  # Celery's own default: RSA-PSS over SHA-256
DEFAULT_MONITOR_ONLY = False  # only Flower is a monitor: every other process signs


class Settings(BaseSettings):
    """celeray's configuration, one ``CELERAY_*`` variable per field.

    Each field's description is what ``docs/settings.md`` shows: the table there is made from
    this model by ``python -m celeray.settings_doc`` and a test keeps the two equal. The
    description of a field that may be unset (``None``) ends with what unset means.
    """

    model_config = SettingsConfigDict(env_prefix="CELERAY_", extra="ignore", populate_by_name=True)

    home: Path = Field(
        default=DEFAULT_HOME,
        description="supervisor's files, logs, pids, generated credentials, beat's state, "
        "local staging",
    )
    pipelines: Path = Field(default=DEFAULT_PIPELINES, description="the pipeline file")
    broker_url: str = Field(
        default=DEFAULT_BROKER_URL,
        description="Celery's broker: `redis://` (a password inside the URL), `rediss://` "
        "(TLS), or RabbitMQ: `amqp://user:password@host:5672/vhost`, `amqps://` (TLS); "
        "results and run state stay on Redis (see docs/brokers.md)",
    )
    result_backend: str = Field(
        default=DEFAULT_RESULT_BACKEND,
        description="Celery's result backend; run records and locks too, unless "
        "`CELERAY_STATE_URL` is set",
    )
    state_url: str | None = Field(
        default=None,
        description="Redis for run locks and run records; unset: the result backend",
    )
    ray_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CELERAY_RAY_ADDRESS", "RAY_ADDRESS"),
        description="host:port of the Ray head; unset: 127.0.0.1:`CELERAY_RAY_PORT`",
    )
    ray_port: int = Field(
        default=DEFAULT_RAY_PORT,
        description="port of the Ray head `celeray up` starts (Ray's own default, 6379, is "
        "Redis's)",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="bearer token of the HTTP API; unset: generated into "
        "`$CELERAY_HOME/api_token` (mode 0600)",
    )
    api_port: int = Field(
        default=DEFAULT_API_PORT,
        description="the HTTP API's port (on 127.0.0.1 under `celeray up`)",
    )
    flower_port: int = Field(
        default=DEFAULT_FLOWER_PORT, description="Flower's port (on 127.0.0.1)"
    )
    flower_url: str | None = Field(
        default=None,
        description="Flower's address as a browser reaches it, for the web pages' links to "
        "its task and worker pages; unset: `http://127.0.0.1:<flower_port>`",
    )
    flower_user: str = Field(default=DEFAULT_FLOWER_USER, description="Flower's basic-auth user")
    flower_password: SecretStr | None = Field(
        default=None,
        description="Flower's basic-auth password; unset: generated into "
        "`$CELERAY_HOME/flower_password`",
    )
    broker_api_url: SecretStr | None = Field(
        default=None,
        description="RabbitMQ's management API, `http://user:password@host:15672/api/`, for "
        "Flower's broker page (kept in the home's Flower conf, mode 0600); unset: Flower "
        "shows no queue lengths",
    )
    staging_url: str | None = Field(
        default=None,
        description="where io workers copy inputs Ray cannot read in place (http, sftp...); "
        "unset: `file://$CELERAY_HOME/staging`",
    )
    # S3: only where and which region; credentials stay in botocore's own chain (AWS_*).
    # celeray.fsoptions reads these two variables itself on Ray nodes (no pydantic-settings).
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint, http(s)://host:port, for every process and Ray "
        "node; unset: AWS's own",
    )
    s3_region: str | None = Field(
        default=None,
        description="S3 region; credentials come only from botocore's chain (`AWS_*`, "
        "profile, instance role); unset: botocore's (`AWS_DEFAULT_REGION`, profile)",
    )
    local_roots: PathList = Field(
        default=DEFAULT_LOCAL_ROOTS,
        description="folders local sources and sinks must stay in; unset: the pipeline "
        "file's folder",
    )
    allow_chained_urls: bool = Field(
        default=DEFAULT_ALLOW_CHAINED_URLS,
        description="allow chained fsspec URLs (`simplecache::s3://...`) in the pipeline file",
    )
    allow_hard_links: bool = Field(
        default=DEFAULT_ALLOW_HARD_LINKS,
        description="read local inputs that have more than one hard link (when the landing "
        "folder's writers are trusted)",
    )
    api_rate_limit: int = Field(
        default=DEFAULT_API_RATE_LIMIT, ge=0,
        description="the API's requests a minute per client (its token, or its address "
        "without one); 0 turns the limit off",
    )
    signing_key: Path | None = Field(
        default=None,
        description="PEM private key that signs task messages (workers, beat, API, CLI; "
        "never Flower); unset: `$CELERAY_HOME/signing_key.pem`",
    )
    signing_certificate: Path | None = Field(
        default=None,
        description="the key's certificate; unset: `$CELERAY_HOME/signing_cert.pem`",
    )
    signing_cert_store: Path | None = Field(
        default=None,
        description="certificate file, or folder of them, whose signatures workers accept; "
        "unset: the signing certificate",
    )
    signing_digest: str = Field(
        default=DEFAULT_SIGNING_DIGEST,
        description="digest of the task messages' RSA-PSS signature",
    )
    monitor_only: bool = Field(
        default=DEFAULT_MONITOR_ONLY,
        description="a process without the key (Flower): it sends only unsigned messages, "
        "which workers refuse",
    )
    redis_tls_ca_file: Path | None = Field(
        default=None, description="CA bundle verifying `rediss://` servers; unset: the system's"
    )
    redis_tls_cert_file: Path | None = Field(
        default=None,
        description="client certificate for `rediss://`, when Redis asks for one; unset: none",
    )
    redis_tls_key_file: Path | None = Field(
        default=None,
        description="the client certificate's private key; unset: in the certificate file",
    )
    amqp_tls_ca_file: Path | None = Field(
        default=None, description="CA bundle verifying an `amqps://` broker; unset: the system's"
    )
    amqp_tls_cert_file: Path | None = Field(
        default=None,
        description="client certificate for `amqps://`, when RabbitMQ asks for one; unset: none",
    )
    amqp_tls_key_file: Path | None = Field(
        default=None,
        description="that client certificate's private key; unset: in the certificate file",
    )

    task_time_limit: int = Field(
        default=DEFAULT_TASK_TIME_LIMIT, gt=0,
        description="hard limit of one task, seconds; the dispatcher ends a batch's Ray tasks "
        "at 95% of it",
    )
    visibility_timeout: int | None = Field(
        default=None,
        description="seconds before Redis gives an unacknowledged message to another worker; "
        "must exceed the time limit by more than Ray's wait for a lost head "
        "(`RAY_gcs_rpc_server_reconnect_timeout_s`, 60 s); on RabbitMQ, set its "
        "`consumer_timeout` (ms) to at least this; unset: the time limit + 600",
    )
    run_lock_ttl: int = Field(
        default=DEFAULT_RUN_LOCK_TTL, gt=0,
        description="seconds a dead run's lock lingers (a live run renews it)",
    )
    result_expires: int = Field(
        default=DEFAULT_RESULT_EXPIRES, gt=0,
        description="seconds results and run records are kept (a week)",
    )
    max_deliveries: int = Field(
        default=DEFAULT_MAX_DELIVERIES, ge=1,
        description="a batch delivered more often (its worker died each time) is quarantined "
        "as poison",
    )
    reconcile_interval: int = Field(
        default=DEFAULT_RECONCILE_INTERVAL, ge=0,
        description="seconds between beat's reconciliation passes; 0 turns them off",
    )

    max_file_bytes: Size = Field(
        default=DEFAULT_MAX_FILE_BYTES, description="larger inputs are quarantined"
    )
    max_decompressed_bytes: Size = Field(
        default=DEFAULT_MAX_DECOMPRESSED_BYTES,
        description="decompression stops past this, and the file is quarantined",
    )
    max_row_bytes: Size = Field(
        default=DEFAULT_MAX_ROW_BYTES,
        description="the longest CSV or JSON line accepted; also pyarrow's block size (its "
        "read-ahead holds up to 32 blocks)",
    )
    zstd_max_window_bytes: Size = Field(
        default=DEFAULT_ZSTD_MAX_WINDOW,
        description="zstd frames asking for a larger window are quarantined (zstd's own "
        "default limit)",
    )
    max_columns: int = Field(
        default=DEFAULT_MAX_COLUMNS, ge=1,
        description="wider CSV headers, JSON objects and Parquet files are quarantined, "
        "counted before parsing",
    )
    unit_bytes: Size = Field(
        default=DEFAULT_UNIT_BYTES,
        description="small files are grouped into one Ray task up to this; CSV and JSON "
        "lines files of twice this or more are split into ranges of about this (compressed "
        "ones by their estimated text, into at most as many ranges as the cluster's CPUs)",
    )

    ray_max_in_flight: int = Field(
        default=DEFAULT_RAY_MAX_IN_FLIGHT, ge=0,
        description="Ray tasks in flight per batch; 0: twice the cluster's CPUs",
    )
    min_free_memory: float = Field(
        default=DEFAULT_MIN_FREE_MEMORY, ge=0.0, lt=1.0,
        description="below this fraction of free memory the dispatcher waits before submitting",
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.s3_endpoint_url and urlsplit(self.s3_endpoint_url).scheme not in ("http", "https"):
            raise ValueError(
                f"CELERAY_S3_ENDPOINT_URL ({redact_url(self.s3_endpoint_url)}) must be an "
                "http:// or https:// URL, e.g. https://s3.eu-west-1.amazonaws.com"
            )
        if self.flower_url and urlsplit(self.flower_url).scheme not in ("http", "https"):
            raise ValueError(f"CELERAY_FLOWER_URL ({redact_url(self.flower_url)}) must be an "
                             "http:// or https:// URL")  # fmt: skip
        from celeray.broker import QUORUM_DELIVERY_LIMIT, broker_kind

        try:
            kind = broker_kind(self.broker_url)
        except ValueError as exc:
            raise ValueError(f"CELERAY_BROKER_URL ({redact_url(self.broker_url)}): {exc}") from None
        for what, url in (("CELERAY_RESULT_BACKEND", self.result_backend),
                          ("CELERAY_STATE_URL", self.state_url)):
            if url is not None and urlsplit(url).scheme.lower() not in ("redis", "rediss"):
                raise ValueError(
                    f"{what} ({redact_url(url)}) must be a redis:// or rediss:// URL: results "
                    "and run state live on Redis, whichever the broker"
                )
        if kind == "amqp" and self.max_deliveries >= QUORUM_DELIVERY_LIMIT:
            raise ValueError(
                f"CELERAY_MAX_DELIVERIES ({self.max_deliveries}) must stay below RabbitMQ's "
                f"delivery limit of celeray's quorum queues ({QUORUM_DELIVERY_LIMIT}), or the "
                "broker drops a poison batch before celeray quarantines it"
            )
        if self.visibility_timeout is not None and self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                f"CELERAY_VISIBILITY_TIMEOUT ({self.visibility_timeout}s) must exceed "
                f"CELERAY_TASK_TIME_LIMIT ({self.task_time_limit}s), or a running task is "
                "delivered a second time"
            )
        return self

    @property
    def effective_visibility_timeout(self) -> int:
        """Seconds a delivered, unacknowledged message waits before Redis gives it back."""
        if self.visibility_timeout is not None:
            return self.visibility_timeout
        return self.task_time_limit + DEFAULT_VISIBILITY_MARGIN

    @property
    def flower_link(self) -> str:
        """The Flower address the web pages link to (no trailing ``/``)."""
        return (self.flower_url or f"http://127.0.0.1:{self.flower_port}").rstrip("/")

    @property
    def effective_state_url(self) -> str:
        """Redis URL for run locks and run records."""
        return self.state_url or self.result_backend

    @property
    def effective_signing_key(self) -> Path:
        """The private key that signs this process's task messages."""
        return self.signing_key or self.home.resolve() / SIGNING_KEY_FILE

    @property
    def effective_signing_certificate(self) -> Path:
        """The certificate of :attr:`effective_signing_key`."""
        return self.signing_certificate or self.home.resolve() / SIGNING_CERT_FILE

    @property
    def effective_signing_cert_store(self) -> Path:
        """The certificates whose signatures workers accept."""
        return self.signing_cert_store or self.effective_signing_certificate

    @property
    def effective_ray_address(self) -> str:
        """``host:port`` of the Ray head to connect to."""
        return self.ray_address or f"127.0.0.1:{self.ray_port}"

    @property
    def effective_staging_url(self) -> str:
        """Where I/O tasks stage inputs that Ray cannot read in place."""
        if self.staging_url:
            return self.staging_url
        return (self.home.resolve() / "staging").as_uri()

    def local_roots_for(self, pipelines: Path | None = None) -> tuple[str, ...]:
        """The allowed local roots, resolved: ``local_roots``, or else the folder of
        ``pipelines`` (default: the configured pipeline file)."""
        from celeray.roots import resolve_roots

        if self.local_roots:
            return resolve_roots(self.local_roots)
        return resolve_roots([Path(pipelines or self.pipelines).absolute().parent])

    def pipeline_rules(self, pipelines: Path | None = None) -> dict[str, Any]:
        """The keyword arguments of ``load_pipelines`` that come from settings."""
        return {
            "allow_chained_urls": self.allow_chained_urls,
            "local_roots": self.local_roots_for(pipelines),
        }

    def read_roots(self) -> list[str]:
        """Where Ray tasks may read local files: the local roots and local staging."""
        from celeray.roots import local_path, resolve_roots

        staging = local_path(self.effective_staging_url)
        extra = [staging] if staging else []
        return list(resolve_roots([*self.local_roots_for(), *extra]))

    def limits(self) -> dict[str, int]:
        """The input caps as the plain dict Ray tasks receive, and ``allow_hard_links`` (0/1)."""
        return {
            "max_file_bytes": self.max_file_bytes,
            "max_decompressed_bytes": self.max_decompressed_bytes,
            "max_row_bytes": self.max_row_bytes,
            "zstd_max_window_bytes": self.zstd_max_window_bytes,
            "max_columns": self.max_columns,
            "allow_hard_links": int(self.allow_hard_links),
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to log (Redis and RabbitMQ)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))

