"""RabbitMQ for tests: a vhost of the test's own on the machine's broker, or a broker node of
the test's own (to stop and start by pid).

The machine's RabbitMQ (``CELERAY_TEST_RABBITMQ_HOST``/``_PORT``, default 127.0.0.1:5672,
user ``CELERAY_TEST_RABBITMQ_USER``/``_PASSWORD``, default guest/guest) is never restarted
or reconfigured: each test stack makes a vhost of its own with ``rabbitmqctl``
(``CELERAY_TEST_RABBITMQCTL``, e.g. ``docker exec rabbitmq rabbitmqctl`` where the broker is
a container), and a user with a random password, and deletes both (and all in the vhost) when done.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import quote

from tests._stack import Proc, free_port, wait_for

HOST = os.environ.get("CELERAY_TEST_RABBITMQ_HOST", "127.0.0.1")
PORT = int(os.environ.get("CELERAY_TEST_RABBITMQ_PORT", "5672"))
USER = os.environ.get("CELERAY_TEST_RABBITMQ_USER", "guest")
PASSWORD = os.environ.get("CELERAY_TEST_RABBITMQ_PASSWORD", "guest")
CTL = shlex.split(os.environ.get("CELERAY_TEST_RABBITMQCTL", "rabbitmqctl"))
# The server script itself, not Debian's /usr/sbin wrapper (which switches to the rabbitmq
# user, who cannot write the test's folders, and runs the node as a grandchild).
SERVER = os.environ.get("CELERAY_TEST_RABBITMQ_SERVER",
                        shutil.which("rabbitmq-server", path="/usr/lib/rabbitmq/bin")
                        or "rabbitmq-server")  # fmt: skip


def missing() -> str | None:
    """Why RabbitMQ tests cannot run here, or None when they can."""
    if shutil.which(CTL[0]) is None:
        return f"{CTL[0]} not found (set CELERAY_TEST_RABBITMQCTL)"
    try:
        with socket.create_connection((HOST, PORT), timeout=1.0):
            pass
    except OSError as exc:
        return f"no RabbitMQ at {HOST}:{PORT} ({exc})"
    return None


def ctl(*args: str, node: str | None = None, env: dict[str, str] | None = None) -> str:
    """Run ``rabbitmqctl ARGS`` (on ``node`` when given) and return its output."""
    argv = [*CTL, *(["-n", node] if node else []), "-q", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")
    return done.stdout


def amqp_url(vhost: str, *, host: str = HOST, port: int = PORT, user: str = USER,
             password: str = PASSWORD) -> str:  # fmt: skip
    """``amqp://user:password@host:port/vhost`` (the vhost quoted)."""
    return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/" \
        f"{quote(vhost, safe='')}"


class Vhost:
    """A vhost of a test's own on the machine's RabbitMQ, and a user of its own with a
    random password (so a test can look for the password in every log), both deleted by
    :meth:`delete`."""

    def __init__(self, prefix: str = "celeray-test") -> None:
        suffix = secrets.token_hex(4)
        self.name = f"{prefix}-{suffix}"
        self.user, self.password = f"{prefix}-{suffix}", f"pw{secrets.token_hex(12)}"
        ctl("add_vhost", self.name)
        ctl("add_user", self.user, self.password)
        ctl("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")
        self.url = amqp_url(self.name, user=self.user, password=self.password)

    def delete(self) -> None:
        ctl("delete_vhost", self.name)
        ctl("delete_user", self.user)


class RabbitNode:
    """A ``rabbitmq-server`` node of the test's own: its own node name, AMQP and
    distribution ports (free ones), data and logs in ``root``, only an AMQP listener on
    127.0.0.1; stopped and started again by its pid, data kept (queues are durable).

    It shares the machine's epmd (the Erlang port mapper, port 4369), which only maps
    node names to ports.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"celeray-test-{secrets.token_hex(3)}@localhost"
        conf = root / "rabbitmq.conf"
        conf.write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "management.tcp.port = 0\n"  # ignored unless the plugin runs; it does not
        )
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("")
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),  # not the machine's
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(conf.with_suffix("")),
            "RABBITMQ_CONFIG_FILES": str(root / "conf.d"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_PID_FILE": str(root / "rabbit.pid"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        (root / "conf.d").mkdir(exist_ok=True)
        self.starts = 0
        self.proc = self._start()

    def _start(self) -> Proc:
        self.starts += 1
        proc = Proc([SERVER], env=self.env, cwd=self.root,
                    log=self.root / f"server-{self.starts}.log")  # fmt: skip

        def ready() -> bool:
            if not proc.alive():
                raise RuntimeError(f"rabbitmq-server exited:\n{proc.tail()}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True

        wait_for(ready, 120, f"RabbitMQ node {self.name} on {self.port}", interval=0.5)
        return proc

    def url(self, vhost: str = "/") -> str:
        return amqp_url(vhost, host="127.0.0.1", port=self.port, user="guest",
                        password="guest")  # fmt: skip

    def restart(self) -> None:
        """Stop the node by its pid (SIGTERM: a clean stop, as a service manager does)
        and start it again on the same ports and data."""
        self.proc.stop(timeout=60)
        self.proc = self._start()

    def stop(self) -> None:
        self.proc.stop(timeout=60)
