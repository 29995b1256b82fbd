"""What a local Kafka broker runs on: Apache Kafka's jars, fetched once with Maven from Maven Central
into a cache outside the repository, and a ``java`` new enough to run them.

Apart from :class:`stepstream.kafka.local.LocalKafka` because it provisions the machine rather than
running a broker: it happens once per Kafka version, every data directory shares its cache, it alone
needs Maven, and its errors name the alternatives (an existing cluster, Docker) for a machine that
lacks Java or Maven. ``STEPSTREAM_KAFKA_VERSION`` and ``STEPSTREAM_KAFKA_CACHE`` choose the version
and the cache (see :mod:`stepstream.kafka.local`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from stepstream.errors import KafkaProvisioningError
from stepstream.local_servers import fetched_once, last_lines, progress

KAFKA_VERSION = "4.1.1"
"""The Apache Kafka release the local broker runs; ``STEPSTREAM_KAFKA_VERSION`` overrides it."""

MINIMUM_JAVA_VERSION = 17
"""Kafka 4.x brokers refuse to run on older Java."""

# Kafka 4 logs through SLF4J and ships no binding of its own; this one routes it to log4j2, which the
# generated log4j2.properties keeps quiet.
_LOG4J_SLF4J_BINDING = "org.apache.logging.log4j:log4j-slf4j-impl:2.24.3"
# Pinned so the download does not depend on whichever plugin version Maven resolves that day.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

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
