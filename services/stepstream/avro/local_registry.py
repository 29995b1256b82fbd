"""A real schema registry serving the Confluent Schema Registry REST API, on this machine, from Maven Central.

Confluent's own Schema Registry is published neither on Maven Central nor on PyPI (only on
Confluent's Maven repository and as a container image), and Karapace is not on PyPI. Apicurio
Registry is on Maven Central and serves the Confluent API under ``/apis/ccompat/v7``; each release
there carries, beside its thin jar, an ``-all.tar.gz`` of the ready-built Quarkus application. So
that archive is fetched once with Maven into a cache outside the repository, and the registry runs
as a plain ``java`` process, its storage an H2 database file in its data directory (no database server)::

    with LocalRegistry(data_dir=Path(".stepstream/registry")) as registry:
        registry.url           # "http://127.0.0.1:41733/apis/ccompat/v7"

The schemas outlive the process (``db/`` in the data directory): records in Kafka name their schema
by the id the registry gave it, so a registry that forgot its ids on a restart would make them
unreadable. The process itself belongs to the object that started it, unlike
:class:`stepstream.kafka.LocalKafka`: with ``port=0`` its port is known only to that object.
The data directory holds ``registry.log`` (the registry's output), ``db/`` and its temporary files.

Apicurio Registry 3.3 is compiled for Java 21, which Debian 12 does not package; the Java to run it
is the first of ``STEPSTREAM_REGISTRY_JAVA_HOME``, ``JAVA_HOME``, ``java`` on ``PATH`` and the JDKs
installed in the usual folders that is new enough. ``STEPSTREAM_REGISTRY_VERSION=2.6.13.Final``
runs the previous line on Java 17 instead (docs/decisions/0014-schema-registry.md compares them).

Environment variables: ``STEPSTREAM_REGISTRY_VERSION`` overrides :data:`REGISTRY_VERSION`;
``STEPSTREAM_REGISTRY_CACHE`` replaces the cache folder (default: Kafka's, ``STEPSTREAM_KAFKA_CACHE``
or ``$XDG_CACHE_HOME/stepstream`` or ``~/.cache/stepstream``), under which each version gets its own
``apicurio-registry-<version>`` folder; ``STEPSTREAM_REGISTRY_JAVA_HOME`` names the JDK to use.
"""

from __future__ import annotations

import datetime
import functools
import glob
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from types import TracebackType

from stepstream.errors import StepstreamError
from stepstream.local_servers import fetched_once, last_lines, port_answers, progress

REGISTRY_VERSION = "3.3.3"
"""The Apicurio Registry release to run; ``STEPSTREAM_REGISTRY_VERSION`` overrides it."""

FALLBACK_VERSION = "2.6.13.Final"
"""Run where no Java 21+ is found (Debian 12 packages Java 17 only): the previous line, tested the same way."""
_NEWEST_LINE_JAVA = 21  # what REGISTRY_VERSION's classes are compiled for

MINIMUM_JAVA_VERSION = 17
"""The oldest Java any supported release runs on; a release's own class files may ask for more (3.3: 21)."""

# The ccompat API's version; Apicurio 3 serves v7 (and v8), Apicurio 2.6 serves v6 and v7.
_CCOMPAT_PATH = "/apis/ccompat/v7"
# Pinned so the download does not depend on whichever plugin version Maven resolves that day.
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
# Quarkus logs this line once the HTTP server listens; with port 0 it is where the chosen port shows.
_LISTENING = re.compile(r"Listening on: https?://[^\s/]+:(\d+)")

_ALTERNATIVES = (
    "Alternatives: set STEPSTREAM_TEST_REGISTRY to the URL of an existing Confluent-compatible schema registry "
    "(the tests use it instead); install a JDK 21+ and Maven, or run STEPSTREAM_REGISTRY_VERSION=2.6.13.Final "
    "on Java 17 (e.g. `apt-get install openjdk-17-jre-headless maven`); or run a registry with Docker "
    "(apicurio/apicurio-registry, confluentinc/cp-schema-registry)."
)


class RegistryProvisioningError(StepstreamError):
    """A local schema registry could not be fetched, started or stopped.

    The message says what is missing and which alternatives exist; retrying the same call will not help.
    """


def registry_version() -> str:
    """The Apicurio Registry version to run: ``STEPSTREAM_REGISTRY_VERSION`` if set, else
    :data:`REGISTRY_VERSION` where a Java 21+ is found, else :data:`FALLBACK_VERSION`."""
    chosen = os.environ.get("STEPSTREAM_REGISTRY_VERSION")
    if chosen:
        return chosen
    return REGISTRY_VERSION if _java_found(_NEWEST_LINE_JAVA) else FALLBACK_VERSION


@functools.cache
def _java_found(minimum: int) -> bool:
    pinned = os.environ.get("STEPSTREAM_REGISTRY_JAVA_HOME")
    if pinned:
        candidates = [str(Path(pinned).expanduser() / "bin" / "java")]
    else:
        candidates = [*_configured_javas(), *_installed_javas()]
    return any((_java_major_version(java) or 0) >= minimum for java in candidates)


def registry_cache_dir(version: str | None = None) -> Path:
    """The folder holding (or about to hold) one Apicurio Registry version, outside any repository."""
    # Kafka's cache override is honoured too: whoever moved the Maven-fetched servers wants them together.
    override = os.environ.get("STEPSTREAM_REGISTRY_CACHE") or os.environ.get("STEPSTREAM_KAFKA_CACHE")
    if override:
        base = Path(override).expanduser()
    else:
        xdg_cache = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg_cache) if xdg_cache else Path.home() / ".cache") / "stepstream"
    return base / f"apicurio-registry-{version or registry_version()}"


def fetch(version: str | None = None) -> Path:
    """The folder of the ready-built registry for ``version``, downloaded with Maven into the cache on first use.

    Only downloads (``make`` can warm the cache with it). Safe when several processes call it at once (a
    file lock), and a download that died half-way is never used: the archive is unpacked in a temporary
    folder that is renamed into place only when complete.
    """
    version = version or registry_version()
    cache = registry_cache_dir(version)
    waiting = f"waiting for another process to fetch Apicurio {version}"
    return fetched_once(
        cache / "app",
        lambda staging: _download(version, staging),
        what=f"Apicurio Registry {version}",
        waiting_message=waiting,
    )


def _download(version: str, staging: Path) -> None:
    """The registry's application into ``staging / "app"`` (``fetched_once`` puts it in place)."""
    maven = shutil.which("mvn")
    if maven is None:
        raise RegistryProvisioningError(
            f"Expected Maven (`mvn`) on PATH to download Apicurio Registry {version} the first time, but found none. "
            f"{_ALTERNATIVES}"
        )
    progress(f"downloading Apicurio Registry {version} with Maven (first run only, ~160 MB)…")
    # The `all` archive is the application as its release built it (Quarkus' fast-jar layout in 3.x, a
    # runner jar and lib/ in 2.x): nothing to resolve or build here, only one artifact to unpack.
    command = [
        maven,
        "-q",
        "-B",
        f"{_DEPENDENCY_PLUGIN}:unpack",
        f"-Dartifact=io.apicurio:apicurio-registry-app:{version}:tar.gz:all",
        f"-DoutputDirectory={staging / 'app'}",
        f"-DmarkersDirectory={staging / 'markers'}",
    ]
    try:
        # In an empty folder, so Maven runs its standalone project and no stray pom.xml is picked up.
        result = subprocess.run(command, cwd=staging, capture_output=True, text=True, timeout=1800, check=False)
    except subprocess.TimeoutExpired as error:
        raise RegistryProvisioningError(
            f"Maven did not finish downloading Apicurio Registry {version} in 30 min"
        ) from error
    except OSError as error:  # e.g. Maven found but no Java for it
        raise RegistryProvisioningError(f"Could not run Maven ({maven}): {error}. {_ALTERNATIVES}") from error
    if result.returncode != 0:
        # Maven ends its output with colour resets even in batch mode; they are noise in an exception.
        output = last_lines(re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr), 30)
        raise RegistryProvisioningError(
            f"Maven could not download Apicurio Registry {version} (exit code {result.returncode}):\n{output}\n"
            f"{_ALTERNATIVES}"
        )
    _launcher(staging / "app")  # refuses an archive in a layout this module does not know


def _launcher(app: Path) -> Path:
    """The jar that starts the application: ``quarkus-run.jar`` (3.x), or the ``-runner.jar`` (2.x)."""
    fast_jar = app / "quarkus-run.jar"
    if fast_jar.is_file():
        return fast_jar
    runners = sorted(app.glob("*-runner.jar"))
    if runners:
        return runners[0]
    raise RegistryProvisioningError(
        f"Expected quarkus-run.jar or a *-runner.jar in {app}, but found neither; was the archive's layout changed?"
    )


def _required_java(app: Path) -> int:
    """The Java release the application's own classes were compiled for (Apicurio 3.3: 21; 2.6: 17).

    Read from the class files rather than tabled by version, so a new release asks for what it needs.
    """
    jars = sorted((app / "app").glob("*.jar")) or [_launcher(app)]
    newest = 0
    for jar in jars:
        with zipfile.ZipFile(jar) as archive:
            for entry in archive.infolist():
                if entry.filename.endswith(".class") and not entry.filename.startswith("META-INF/"):
                    with archive.open(entry) as class_file:
                        header = class_file.read(8)
                    if header[:4] == b"\xca\xfe\xba\xbe":
                        newest = max(newest, int.from_bytes(header[6:8], "big"))
    # Class file version 61 is Java 17, 65 is Java 21: the release is the version minus 44.
    return max(MINIMUM_JAVA_VERSION, newest - 44)


def find_java(minimum: int = MINIMUM_JAVA_VERSION) -> str:
    """A ``java`` of at least ``minimum``: ``STEPSTREAM_REGISTRY_JAVA_HOME``'s if set, else the first of
    ``JAVA_HOME``'s, the one on ``PATH``, and the newest JDK installed in the usual folders."""
    pinned = os.environ.get("STEPSTREAM_REGISTRY_JAVA_HOME")
    if pinned:
        java = str(Path(pinned).expanduser() / "bin" / "java")
        version = _java_major_version(java)
        if version is None or version < minimum:
            found = "no runnable java" if version is None else f"Java {version}"
            raise RegistryProvisioningError(
                f"Expected STEPSTREAM_REGISTRY_JAVA_HOME to be a JDK of Java {minimum}+ for Apicurio Registry "
                f"{registry_version()}, but {java} is {found}. {_ALTERNATIVES}"
            )
        return java
    seen: list[str] = []
    # A machine's default Java is often older than Apicurio 3 needs (Debian 12 packages 17), while a newer
    # JDK sits beside it unused; looking there spares everyone setting JAVA_HOME for the registry alone.
    installed = sorted(
        (java for java in _installed_javas() if _java_major_version(java) is not None),
        key=lambda java: _java_major_version(java) or 0,
        reverse=True,
    )
    for java in [*_configured_javas(), *installed]:
        version = _java_major_version(java)
        if version is None:
            continue
        seen.append(f"{java} (Java {version})")
        if version >= minimum:
            return java
    found = ", ".join(dict.fromkeys(seen)) or "none"
    raise RegistryProvisioningError(
        f"Expected a Java {minimum}+ to run Apicurio Registry {registry_version()} (in STEPSTREAM_REGISTRY_JAVA_HOME, "
        f"JAVA_HOME, on PATH or under /usr/lib/jvm), but found: {found}. {_ALTERNATIVES}"
    )


def _configured_javas() -> list[str]:
    javas = []
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        javas.append(str(Path(java_home) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        javas.append(on_path)
    return javas


def _installed_javas() -> list[str]:
    patterns = [
        "/usr/lib/jvm/*/bin/java",  # Debian, Ubuntu, Fedora
        "/Library/Java/JavaVirtualMachines/*/Contents/Home/bin/java",  # macOS
        str(Path.home() / ".sdkman/candidates/java/*/bin/java"),
    ]
    # The same JDK is often reachable under several names (Debian's java-1.17.0-openjdk-amd64 symlink).
    return list(dict.fromkeys(os.path.realpath(java) for pattern in patterns for java in sorted(glob.glob(pattern))))


@functools.cache
def _java_major_version(java: str) -> int | None:
    """The major version of ``java``, or ``None`` when it is missing or does not run."""
    if not os.access(java, os.X_OK):
        return None
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    # `java -version` writes to stderr: `openjdk version "21.0.5" …`, or `"1.8.0_392"` before Java 9.
    found = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


class LocalRegistry:
    """One Apicurio Registry on 127.0.0.1, its schemas in its data directory, serving the Confluent Schema
    Registry API at :attr:`url`."""

    def __init__(self, data_dir: Path, port: int = 0, *, heap_mb: int = 128, version: str | None = None) -> None:
        """``port=0`` lets the registry choose a free port (no race with other processes picking one too)."""
        if heap_mb < 64:
            raise ValueError(f"Expected heap_mb of at least 64 for Apicurio Registry, but got {heap_mb}")
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.requested_port = port
        self.heap_mb = heap_mb
        self.version = version or registry_version()
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        # Where this start's output begins in registry.log, so errors show this start's lines only.
        self._log_start_offset = 0

    @property
    def url(self) -> str:
        """The base URL of the Confluent-compatible API, e.g. ``http://127.0.0.1:41733/apis/ccompat/v7``."""
        if self._port is None:
            raise RegistryProvisioningError("The local schema registry has no URL until start() returns")
        return f"http://127.0.0.1:{self._port}{_CCOMPAT_PATH}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "registry.log"

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 120.0) -> None:
        """Start the registry and wait until its Confluent API answers; a no-op when it already runs.

        ``timeout_s`` bounds the wait for the registry, not the first run's download.
        """
        if self.is_running():
            return
        self._process = None
        app = fetch(self.version)
        java = find_java(_required_java(app))
        if self.requested_port and port_answers(self.requested_port):
            # Else the readiness probe could take whatever listens there for this registry.
            raise RegistryProvisioningError(
                f"Expected port {self.requested_port} on 127.0.0.1 to be free for the local schema registry, "
                "but something already listens there. Stop it, choose another port, or pass port=0."
            )
        tmp = self.data_dir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        self._spawn(java, app, tmp)
        self._wait_until_ready(timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the registry (SIGTERM, then SIGKILL after ``timeout_s``); its schemas are gone with it."""
        process, self._process = self._process, None
        self._port = None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                try:
                    process.wait(10.0)
                except subprocess.TimeoutExpired as error:
                    raise RegistryProvisioningError(
                        f"Apicurio Registry (pid {process.pid}) did not exit even after SIGKILL"
                    ) from error

    def __enter__(self) -> LocalRegistry:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _jvm_options(self, tmp: Path) -> list[str]:
        return [
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseSerialGC",  # a single GC thread is plenty for a local registry and spares the 2 cores
            # The quick JIT tier only: starts in ~4 s instead of ~7 s and keeps ~30 MB less resident; a
            # test registry never runs long enough for the optimising tier to pay off.
            "-XX:TieredStopAtLevel=1",
            "-XX:ReservedCodeCacheSize=48m",
            "-Xss512k",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            # Vert.x's file cache, H2 and the registry's snapshot/import folders write here, not in /tmp.
            f"-Djava.io.tmpdir={tmp}",
        ]

    def _registry_options(self, tmp: Path) -> list[str]:
        # System properties outrank the application's application.properties and QUARKUS_*/APICURIO_* in
        # the environment, so a stray variable cannot move the registry off loopback or onto a database.
        options = {
            "quarkus.http.host": "127.0.0.1",
            "quarkus.http.port": str(self.requested_port),
            # Apicurio 3 enables Quarkus' management interface (health, metrics) on its own port, 9000 by
            # default; a random one on loopback, so two registries (or anything on 9000) never collide.
            "quarkus.management.host": "127.0.0.1",
            "quarkus.management.port": "0",
            "quarkus.http.access-log.enabled": "false",
            "apicurio.storage.snapshot.location": str(tmp),
            "apicurio.import.work-dir": str(tmp),
        }
        # The database keeps 20 pooled connections open from the start by default; one is plenty for a
        # local registry. The pool's settings moved between the two release lines.
        pool = "quarkus.datasource.jdbc" if self.version.startswith("2.") else "apicurio.datasource.jdbc"
        options |= {f"{pool}.initial-size": "1", f"{pool}.min-size": "1", f"{pool}.max-size": "10"}
        # H2 in a file instead of Apicurio's default, in memory: the ids must survive a restart.
        database = f"jdbc:h2:file:{self.data_dir / 'db' / 'registry'}"
        if self.version.startswith("2."):
            options |= {"registry.datasource.url": database, "quarkus.datasource.jdbc.url": database}
        else:
            options["apicurio.datasource.url"] = database
        return [f"-D{key}={value}" for key, value in options.items()]

    def _spawn(self, java: str, app: Path, tmp: Path) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        with self.log_file.open("a", encoding="utf-8") as log:
            log.write(f"\n=== stepstream: starting Apicurio Registry {self.version} at {started_at} ===\n")
        self._log_start_offset = self.log_file.stat().st_size
        command = [java, *self._jvm_options(tmp), *self._registry_options(tmp), "-jar", str(_launcher(app))]
        with self.log_file.open("ab") as log:
            # Owned by this process and left in its process group, unlike the Kafka broker: a Ctrl-C meant
            # for a test run stops the registry too, which holds nothing worth keeping.
            self._process = subprocess.Popen(
                command, cwd=self.data_dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def _wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                exit_code = None if process is None else process.returncode
                self._process = None
                how = f" with exit code {exit_code}" if exit_code is not None else ""
                raise RegistryProvisioningError(
                    f"Apicurio Registry exited during start-up{how}. Last lines of {self.log_file}:\n{self._log_tail()}"
                )
            if self._port is None:
                self._port = self.requested_port or self._port_from_log()
            if self._port is not None and _api_answers(self.url):
                return
            if time.monotonic() > deadline:
                tail = self._log_tail()
                self.stop()  # a registry this call started and cannot use is not left behind
                raise RegistryProvisioningError(
                    f"Apicurio Registry's Confluent API did not answer within {timeout_s:.0f} s. "
                    f"Last lines of {self.log_file}:\n{tail}"
                )
            time.sleep(0.2)

    def _port_from_log(self) -> int | None:
        found = _LISTENING.search(self._log_text())
        return int(found.group(1)) if found else None

    def _log_text(self) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(self._log_start_offset)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self) -> str:
        return last_lines(self._log_text(), 40) or "(empty)"


# Loopback only: a proxy from the environment (HTTP_PROXY without 127.0.0.1 in NO_PROXY) must not see it.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _api_answers(url: str) -> bool:
    """Whether the Confluent API lists subjects, which needs the storage to be ready, not only the server."""
    try:
        with _NO_PROXY_OPENER.open(f"{url}/subjects", timeout=2.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
