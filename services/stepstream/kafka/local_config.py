"""What a local Kafka broker starts from: the ``server.properties`` and ``log4j2.properties`` written
into its data directory at each start, its storage formatted once (KRaft, with the SCRAM users when
it requires SASL_SSL), and the ``java`` command line the format tool and the broker both run with.

:class:`_BrokerConfig` is the half of :class:`~stepstream.kafka.local.LocalKafka` that says how its
broker is set up (listeners, security, the internal topics' sizes). It is apart from the other half,
which starts, probes and stops the process, so that each reads as one thing; it uses the fields the
class declares: ``data_dir``, ``port``, ``controller_port`` and ``sasl_ssl``.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path

from stepstream.errors import KafkaProvisioningError
from stepstream.kafka.local_tls import BROKER_USER, CLIENT_USER, MECHANISM, LocalTls
from stepstream.local_servers import last_lines


class _BrokerConfig:
    """The configuration of :class:`~stepstream.kafka.local.LocalKafka`'s broker, read from its fields."""

    data_dir: Path
    port: int
    controller_port: int | None
    sasl_ssl: bool

    @property
    def tls(self) -> LocalTls:
        return LocalTls(self.data_dir / "tls")

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


def _new_cluster_id() -> str:
    # What `kafka-storage.sh random-uuid` prints (URL-safe base64 of a random UUID), without starting a
    # JVM for it. Kafka's own generator skips ids starting with "-", which command lines mistake for options.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
