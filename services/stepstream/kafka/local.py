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

Environment variables: ``STEPSTREAM_KAFKA_VERSION`` overrides :data:`KAFKA_VERSION`;
``STEPSTREAM_KAFKA_CACHE`` replaces the cache folder (default ``$XDG_CACHE_HOME/stepstream`` or
``~/.cache/stepstream``), under which each version gets its own ``kafka-<version>`` folder.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import datetime
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from stepstream.errors import KafkaProvisioningError
from stepstream.kafka.local_tls import BROKER_USER, CLIENT_USER, MECHANISM, LocalTls
from stepstream.local_servers import exclusive_lock, fetched_once, last_lines, port_answers, progress

KAFKA_VERSION = "4.1.1"
"""The Apache Kafka release the local broker runs; ``STEPSTREAM_KAFKA_VERSION`` overrides it."""

MINIMUM_JAVA_VERSION = 17
"""Kafka 4.x brokers refuse to run on older Java."""

# Kafka 4 logs through SLF4J and ships no binding of its own; this one routes it to log4j2, which the
# generated log4j2.properties keeps quiet.
_LOG4J_SLF4J_BINDING = "org.apache.logging.log4j:log4j-slf4j-impl:2.24.3"
# Pinned so the download does not depend on whichever plugin version Maven resolves that day.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
_HAS_PROC = Path("/proc/self/cmdline").exists()

_ALTERNATIVES = (
    "Alternatives: set KAFKA_BOOTSTRAP_SERVERS to an existing Kafka cluster; "
    "install a JDK 17+ and Maven (e.g. `apt-get install openjdk-17-jre-headless maven`); "
    "or run Kafka with Docker using compose.yaml."
)


def kafka_version() -> str:
    """The Apache Kafka version to run: ``STEPSTREAM_KAFKA_VERSION`` if set, else :data:`KAFKA_VERSION`."""
    return os.environ.get("STEPSTREAM_KAFKA_VERSION") or KAFKA_VERSION


def jar_cache_dir(version: str | None = None) -> Path:
    """The folder holding (or about to hold) the jars of one Kafka version, outside any repository."""
    override = os.environ.get("STEPSTREAM_KAFKA_CACHE")
    if override:
        base = Path(override).expanduser()
    else:
        xdg_cache = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg_cache) if xdg_cache else Path.home() / ".cache") / "stepstream"
    return base / f"kafka-{version or kafka_version()}"


def find_java() -> str:
    """The ``java`` to run Kafka with (``$JAVA_HOME/bin/java``, else from ``PATH``), checked to be Java 17+."""
    java_home = os.environ.get("JAVA_HOME")
    home_java = Path(java_home) / "bin" / "java" if java_home else None
    java = str(home_java) if home_java is not None and os.access(home_java, os.X_OK) else shutil.which("java")
    if java is None:
        raise KafkaProvisioningError(
            f"Expected a `java` executable (Java {MINIMUM_JAVA_VERSION}+) in JAVA_HOME or on PATH to run a local "
            f"Kafka broker, but found none. {_ALTERNATIVES}"
        )
    version = _java_major_version(java)
    if version < MINIMUM_JAVA_VERSION:
        raise KafkaProvisioningError(
            f"Expected Java {MINIMUM_JAVA_VERSION} or newer to run Apache Kafka 4, but {java} is Java {version}. "
            f"{_ALTERNATIVES}"
        )
    return java


def _java_major_version(java: str) -> int:
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise KafkaProvisioningError(f"Could not run `{java} -version`: {error}. {_ALTERNATIVES}") from error
    # `java -version` writes to stderr: `openjdk version "17.0.15" …`, or `"1.8.0_392"` before Java 9.
    found = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if found is None:
        raise KafkaProvisioningError(
            f"Expected `{java} -version` to print a version, but it printed: {result.stderr.strip()!r}. {_ALTERNATIVES}"
        )
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def ensure_jars(version: str | None = None) -> Path:
    """The folder of Kafka's jars for ``version``, downloaded with Maven into the cache on first use.

    Safe when several processes call it at once (a file lock), and a download that died half-way is
    never used: the jars land in a temporary folder that is renamed into place only when complete.
    """
    version = version or kafka_version()
    cache = jar_cache_dir(version)
    waiting = f"waiting for another process to download Kafka {version}"
    return fetched_once(
        cache / "libs",
        lambda staging: _download_jars(version, staging),
        what=f"Apache Kafka {version}",
        waiting_message=waiting,
    )


def _download_jars(version: str, staging: Path) -> None:
    """Kafka's jars into ``staging / "libs"`` (``fetched_once`` puts them in place)."""
    find_java()  # Maven needs it too, and its own error would not name the alternatives
    maven = shutil.which("mvn")
    if maven is None:
        raise KafkaProvisioningError(
            f"Expected Maven (`mvn`) on PATH to download Apache Kafka {version} the first time, but found none. "
            f"{_ALTERNATIVES}"
        )
    (staging / "pom.xml").write_text(_pom(version), encoding="utf-8")
    progress(f"downloading Apache Kafka {version} jars with Maven (first run only, ~45 MB)…")
    command = [
        maven,
        "-q",
        "-B",
        "-f",
        str(staging / "pom.xml"),
        f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
        f"-DoutputDirectory={staging / 'libs'}",
        "-DincludeScope=runtime",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired as error:
        raise KafkaProvisioningError(f"Maven did not finish downloading Apache Kafka {version} in 30 min") from error
    if result.returncode != 0:
        output = last_lines(result.stdout + result.stderr, 30)
        raise KafkaProvisioningError(
            f"Maven could not download Apache Kafka {version} (exit code {result.returncode}):\n{output}\n"
            f"{_ALTERNATIVES}"
        )
    if not (staging / "libs" / f"kafka_2.13-{version}.jar").is_file():
        raise KafkaProvisioningError(f"Expected Maven to fetch kafka_2.13-{version}.jar, but it is missing")


def _pom(version: str) -> str:
    binding_group, binding_artifact, binding_version = _LOG4J_SLF4J_BINDING.split(":")
    return f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.stepstream.local</groupId>
  <artifactId>kafka-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>{binding_group}</groupId>
      <artifactId>{binding_artifact}</artifactId>
      <version>{binding_version}</version>
    </dependency>
  </dependencies>
</project>
"""


@dataclass(kw_only=True, eq=False)
class LocalKafka:
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

    @property
    def tls(self) -> LocalTls:
        return LocalTls(self.data_dir / "tls")

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

    @property
    def _log_dirs(self) -> Path:
        return self.data_dir / "data"

    @property
    def _server_properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def _log4j_properties(self) -> Path:
        return self.data_dir / "log4j2.properties"

    def _controller_port(self) -> int:
        return self.port + 1 if self.controller_port is None else self.controller_port

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

    def _write_configs(self) -> None:
        controller_port = self._controller_port()
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self._log_dirs),
            "num.partitions": "1",
            "default.replication.factor": "1",
            # Topics are created deliberately, with their configs (stepstream.kafka.topics); a typo must fail.
            "auto.create.topics.enable": "false",
            # The run and timer topics are compacted.
            "log.cleaner.enable": "true",
            # Internal topics with one replica, and few partitions so the first start is quick on 2 cores.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "5",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
        }
        if self.sasl_ssl:
            # One listener for clients and the broker itself, SCRAM over TLS; the controller's stays
            # plain, on loopback. Kafka reads PEM files directly (KIP-651): no Java keystore to make.
            login = f'username="{BROKER_USER}" password="{self.tls.password(BROKER_USER)}";'
            settings |= {
                "listeners": f"SASL_SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
                "advertised.listeners": f"SASL_SSL://127.0.0.1:{self.port}",
                "inter.broker.listener.name": "SASL_SSL",
                "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
                "sasl.enabled.mechanisms": MECHANISM,
                "sasl.mechanism.inter.broker.protocol": MECHANISM,
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                    f"org.apache.kafka.common.security.scram.ScramLoginModule required {login}"
                ),
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(self.tls.broker_file),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(self.tls.ca_file),
            }
        lines = [f"{key}={value.replace(chr(92), chr(92) * 2)}" for key, value in settings.items()]
        header = "# Written by stepstream.kafka.local at each start; edits are overwritten.\n"
        self._server_properties.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
        self._log4j_properties.write_text(_LOG4J_PROPERTIES, encoding="utf-8")

    def _java_command(self, java: str, libs: Path, jvm_options: list[str], main_class: str) -> list[str]:
        return [
            java,
            *jvm_options,
            f"-Dlog4j2.configurationFile={self._log4j_properties}",
            "-cp",
            str(libs / "*"),  # java expands the wildcard itself
            main_class,
        ]

    def _format(self, java: str, libs: Path) -> None:
        # A short-lived tool: a small heap and the quick JIT tier start it faster.
        jvm_options = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
        command = [
            *self._java_command(java, libs, jvm_options, "kafka.tools.StorageTool"),
            "format",
            "--cluster-id",
            _new_cluster_id(),
            "--config",
            str(self._server_properties),
        ]
        if self.sasl_ssl:  # SCRAM users are created with the cluster's metadata (there is no broker yet)
            for user in (BROKER_USER, CLIENT_USER):
                command += ["--add-scram", f"{MECHANISM}=[name={user},password={self.tls.password(user)}]"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        except subprocess.TimeoutExpired as error:
            raise KafkaProvisioningError(f"Formatting the Kafka data directory {self._log_dirs} timed out") from error
        if result.returncode != 0:
            raise KafkaProvisioningError(
                f"Could not format the Kafka data directory {self._log_dirs} (exit code {result.returncode}):\n"
                + last_lines(result.stdout + result.stderr, 30)
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


_LOG4J_PROPERTIES = """\
# Written by stepstream.kafka.local at each start; edits are overwritten.
# Warnings and errors only, so kafka.log stays readable, plus the broker's started/stopped lines.
status = warn
# The console appender needs no flushing at exit, and log4j's hook only warns when a JVM stops early.
shutdownHook = disable
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d{ISO8601}] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.console.ref = console
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago; for tests (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _new_cluster_id() -> str:
    # What `kafka-storage.sh random-uuid` prints (URL-safe base64 of a random UUID), without starting a
    # JVM for it. Kafka's own generator skips ids starting with "-", which command lines mistake for options.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


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
