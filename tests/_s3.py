"""A real S3 endpoint on loopback for tests: moto's server, started and stopped by pid.

The Celery workers and the Ray workers of a test stack are other processes, so they reach
it over HTTP like any S3 store, with the endpoint and credentials from their environment
(:attr:`S3Server.env`), never from a plan or a message.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Any

from tests._stack import VENV_BIN, Proc, ProcessExitedError, free_port, wait_for

__all__ = ["BUCKETS", "S3Server"]

BUCKETS = ("landing", "lake")


class S3Server:
    """``moto_server`` on a free loopback port, with the buckets ``landing`` and ``lake``."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # A fresh secret per session: tests look for it where it must never appear.
        self.secret = secrets.token_hex(20)
        self.env = {
            "AWS_ACCESS_KEY_ID": "celeray-test",
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata lookups on loopback
            "CELERAY_S3_ENDPOINT_URL": self.endpoint,
        }
        argv = [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = Proc(argv, env=dict(os.environ), log=root / "moto.log", cwd=root)
        try:
            wait_for(self._ready, 60, f"moto_server on {self.endpoint}")
            fs = self.filesystem()
            for bucket in BUCKETS:
                fs.mkdir(bucket)
        except BaseException:
            self.proc.stop()
            raise

    def _ready(self) -> bool:
        if not self.proc.alive():
            raise ProcessExitedError(f"moto_server exited:\n{self.proc.tail()}")
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def filesystem(self) -> Any:
        """An s3fs file system of the test process itself (no listing cache)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.env["AWS_ACCESS_KEY_ID"],
            secret=self.secret,
            endpoint_url=self.endpoint,
            use_listings_cache=False,
            skip_instance_cache=True,
        )

    def stop(self) -> None:
        self.proc.stop(timeout=10)
