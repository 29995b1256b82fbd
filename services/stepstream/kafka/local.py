"""A real single-node Apache Kafka broker (KRaft mode) on this machine, assembled from Maven Central jars.

Apache Kafka is packaged neither in Debian nor on PyPI, and a Docker engine is not available
everywhere, but a JDK and Maven usually are. So the broker's jars are fetched once with Maven into a
cache outside the repository, and the broker runs as a plain ``java`` process::

    kafka = LocalKafka(data_dir=Path(".stepstream/kafka"))
    kafka.start()              # downloads the jars on first use, formats the data directory once
    kafka.bootstrap_servers    # "127.0.0.1:9092"
    kafka.stop()

The data directory outlives ``stop()``: starting again with the same directory keeps every topic and
record. It holds ``server.properties``, ``log4j2.properties``, ``kafka.log`` (the broker's output),
``kafka.pid`` and the broker's own data under ``data/``.

Environment variables: ``STEPSTREAM_KAFKA_VERSION`` overrides
:data:`~stepstream.kafka.local_jars.KAFKA_VERSION`; ``STEPSTREAM_KAFKA_CACHE`` replaces the cache
folder (default ``$XDG_CACHE_HOME/stepstream`` or ``~/.cache/stepstream``), under which each version
gets its own ``kafka-<version>`` folder.

Kafka's jars and the Java they run on are fetched and found in :mod:`stepstream.kafka.local_jars`;
the files the broker starts from (its configuration, its formatted storage) are written by
:mod:`stepstream.kafka.local_config`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from stepstream.errors import KafkaProvisioningError
from stepstream.kafka.local_config import _BrokerConfig
from stepstream.kafka.local_jars import ensure_jars, find_java, kafka_version
from stepstream.kafka.local_tls import CLIENT_USER, MECHANISM
from stepstream.local_servers import exclusive_lock, last_lines, port_answers

_HAS_PROC = Path("/proc/self/cmdline").exists()


@dataclass(kw_only=True, eq=False)
class LocalKafka(_BrokerConfig):
    """One single-node Kafka broker (combined broker and KRaft controller) listening on 127.0.0.1."""

    data_dir: Path
    port: int = 9092
    controller_port: int | None = None
    """``None`` means ``port + 1``."""
    heap_mb: int = 512
    version: str = field(default_factory=kafka_version)
    # Require SASL/SCRAM over TLS on the broker's listener, as a locked-down cluster does: a CA, the
    # broker's certificate and the passwords are made in ``tls/`` (stepstream.kafka.local_tls);
    # ``client_env`` is what a client then needs.
    sasl_ssl: bool = False
    # Where this start's output begins in kafka.log, so errors show this start's lines only.
    _log_start_offset: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        # Absolute, because the running broker is recognised by the config path on its command line.
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if self.heap_mb < 128:
            raise ValueError(f"Expected heap_mb of at least 128 for a Kafka broker, but got {self.heap_mb}")

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_env(self) -> dict[str, str]:
        """The environment a Stepstream process needs to use this broker (its security settings too)."""
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers}
        if self.sasl_ssl:
            env |= {
                "STEPSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "STEPSTREAM_KAFKA_SASL_MECHANISM": MECHANISM,
                "STEPSTREAM_KAFKA_SASL_USERNAME": CLIENT_USER,
                "STEPSTREAM_KAFKA_SASL_PASSWORD": self.tls.password(CLIENT_USER),
                "STEPSTREAM_KAFKA_SSL_CAFILE": str(self.tls.ca_file),
            }
        return env

    def _client_options(self) -> dict[str, Any]:
        from stepstream.config import KafkaSettings

        return KafkaSettings.from_env(self.client_env()).client_options()

    def ensure_jars(self) -> Path:
        """The folder of this broker's jars, downloaded on first use (see the module function)."""
        return ensure_jars(self.version)

    def is_running(self) -> bool:
        """Whether the broker named by this data directory's pid file is alive (it may still be starting)."""
        return self._running_pid() is not None

    def start(self, timeout_s: float = 90.0) -> None:
        """Start the broker and wait until it answers metadata requests; a no-op when it already runs.

        ``timeout_s`` bounds the wait for the broker, not the first run's download of the jars.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        spawned = False
        with exclusive_lock(self.data_dir / ".lock"):
            pid = self._running_pid()
            if pid is None:
                self._pid_file.unlink(missing_ok=True)  # stale: the process it named is gone
                java = find_java()
                libs = self.ensure_jars()
                self._refuse_busy_ports()
                if self.sasl_ssl:
                    self.tls.ensure()
                self._write_configs()
                if not (self._log_dirs / "meta.properties").is_file():
                    self._format(java, libs)
                pid = self._spawn(java, libs)
                spawned = True
        self._wait_until_ready(pid, timeout_s, spawned=spawned)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout_s``); the data directory stays."""
        if not self.data_dir.is_dir():
            return
        with exclusive_lock(self.data_dir / ".lock"):
            pid = self._running_pid()
            if pid is not None:
                _signal_process_group(pid, signal.SIGTERM)
                if not self._wait_for_exit(pid, timeout_s):
                    _signal_process_group(pid, signal.SIGKILL)
                    if not self._wait_for_exit(pid, 10.0):
                        raise KafkaProvisioningError(f"Apache Kafka (pid {pid}) did not exit even after SIGKILL")
            self._pid_file.unlink(missing_ok=True)

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "kafka.pid"

    @property
    def _log_file(self) -> Path:
        return self.data_dir / "kafka.log"

    def _running_pid(self) -> int | None:
        try:
            pid = int(self._pid_file.read_text(encoding="utf-8").strip())
        except (FileNotFoundError, ValueError):
            return None
        _reap(pid)
        return pid if self._is_this_broker(pid) else None

    def _is_this_broker(self, pid: int) -> bool:
        """Whether ``pid`` is alive and is this data directory's broker, not a process that reused its pid."""
        if not _HAS_PROC:  # macOS: settle for "some process has this pid"
            return _process_exists(pid)
        try:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return b"kafka.Kafka" in arguments and os.fsencode(str(self._server_properties)) in arguments

    def _refuse_busy_ports(self) -> None:
        for port in (self.port, self._controller_port()):
            if port_answers(port):
                raise KafkaProvisioningError(
                    f"Expected port {port} on 127.0.0.1 to be free for the local Kafka broker in {self.data_dir}, "
                    "but something already listens there (another broker?). Stop it or choose other ports."
                )

    def _spawn(self, java: str, libs: Path) -> int:
        started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        with self._log_file.open("a", encoding="utf-8") as log:
            log.write(f"\n=== stepstream: starting Apache Kafka {self.version} at {started_at} ===\n")
        self._log_start_offset = self._log_file.stat().st_size
        jvm_options = [
            f"-Xmx{self.heap_mb}m",
            f"-Xms{min(self.heap_mb, 256)}m",
            "-XX:+UseSerialGC",  # a single GC thread is plenty for a local broker and spares the 2 cores
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
        ]
        command = [*self._java_command(java, libs, jvm_options, "kafka.Kafka"), str(self._server_properties)]
        # posix_spawn rather than subprocess.Popen: the broker may outlive this Python process (a dev
        # broker started by one command, stopped by another), and an abandoned Popen warns. setsid puts
        # it in its own process group, so a Ctrl-C meant for the caller does not reach it.
        pid = os.posix_spawn(
            java,
            command,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(self._log_file), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )
        self._pid_file.write_text(f"{pid}\n", encoding="utf-8")
        # Until the exec completes, /proc shows an empty command line and _is_this_broker says no; wait
        # for it under the lock, so a concurrent start() never takes a starting broker for a stale pid.
        deadline = time.monotonic() + 10.0
        while not self._is_this_broker(pid) and time.monotonic() < deadline:
            exit_code = _reap(pid)
            if exit_code is not None:
                raise self._exited_during_start_up(exit_code)
            time.sleep(0.01)
        return pid

    def _wait_until_ready(self, pid: int, timeout_s: float, *, spawned: bool) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            exit_code = _reap(pid)
            if exit_code is not None or not self._is_this_broker(pid):
                raise self._exited_during_start_up(exit_code)
            if port_answers(self.port) and _broker_answers(self.bootstrap_servers, self._client_options()):
                return
            if time.monotonic() > deadline:
                tail = self._log_tail()
                if spawned:  # a broker this call started and cannot use is not left behind
                    self.stop()
                    hint = ""
                else:
                    hint = " The broker of this data directory was already running; were other ports configured?"
                raise KafkaProvisioningError(
                    f"Apache Kafka did not answer on {self.bootstrap_servers} within {timeout_s:.0f} s.{hint} "
                    f"Last lines of {self._log_file}:\n{tail}"
                )
            time.sleep(0.25)

    def _exited_during_start_up(self, exit_code: int | None) -> KafkaProvisioningError:
        self._pid_file.unlink(missing_ok=True)
        how = f" with exit code {exit_code}" if exit_code is not None else ""
        return KafkaProvisioningError(
            f"Apache Kafka exited during start-up{how}. Last lines of {self._log_file}:\n{self._log_tail()}"
        )

    def _wait_for_exit(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            _reap(pid)
            if not self._is_this_broker(pid):
                return True
            time.sleep(0.1)
        return False

    def _log_tail(self) -> str:
        try:
            with self._log_file.open("rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_start_offset, size - 64_000))
                text = log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return last_lines(text, 40) or "(empty)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago; for tests (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _broker_answers(bootstrap_servers: str, options: dict[str, Any]) -> bool:
    """Whether a broker answers a metadata request listing at least one live (registered, unfenced) broker."""

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000, **options)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            return bool(cluster["brokers"])
        except (TimeoutError, KafkaError, OSError):
            return False
        finally:
            await admin.close()

    # A thread of its own, because start() may be called while an event loop runs (an async fixture,
    # a CLI built on asyncio), and asyncio.run refuses to nest.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-probe") as pool:
        return pool.submit(lambda: asyncio.run(probe())).result()


def _reap(pid: int) -> int | None:
    """Collect ``pid``'s exit code if it is this process's child and has exited, so no zombie is left."""
    try:
        reaped_pid, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: whoever started it reaps it
        return None
    return os.waitstatus_to_exitcode(status) if reaped_pid == pid else None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_process_group(pid: int, signal_number: signal.Signals) -> None:
    # The broker leads its own process group (setsid), so this also reaches any child it started.
    try:
        os.killpg(pid, signal_number)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal_number)
    except PermissionError as error:
        raise KafkaProvisioningError(f"Not allowed to signal Apache Kafka (pid {pid}): {error}") from error
