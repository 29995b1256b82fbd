"""What the benchmarks share: a broker, the engine's services as processes, a clean exit, /proc, tables.

* :func:`broker` — a local Kafka broker in a folder on free ports (or the cluster in
  ``KAFKA_BOOTSTRAP_SERVERS``), as a :class:`Broker` that knows its pid and data folder;
* :class:`Stack` — the four services and a uvicorn app (``workflow_app`` or ``floor_app``), each its
  own process logging into a folder, SIGTERMed if the benchmark dies (``PR_SET_PDEATHSIG``);
* :func:`session` — a benchmark's temporary folder and its exit: SIGTERM acts like Ctrl-C, every
  stack is stopped in order, a failure prints the services' log tails and keeps the folder, and the
  exit code says which (0, 1, or 130 when interrupted); :meth:`Session.stack` runs one stack;
* :func:`cpu_seconds`, :func:`memory` — a process's CPU time and resident memory from /proc;
* :func:`percentile`, :func:`summary`, :func:`fmt`, :func:`render` — numbers and plain-text tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from stepstream.kafka import LocalKafka, TopicNames, free_port
from stepstream.sealing import new_key

BENCH_DIR = Path(__file__).resolve().parent
# The uvicorn apps a Stack can start, by process name: the benchmark's workflows, and the plain-HTTP floor.
APPS = {"app": "workflow_app:app", "floor": "floor_app:app"}
STARTUP_NOISE = ("GroupCoordinatorNotAvailableError", "NotCoordinatorForGroupError")
# What the broker answers (KAFKA-14561) to a transactional produce that arrives while the producer's
# previous transaction is still being committed, for clients without transactions v2 (aiokafka): the
# client retries it after its retry backoff (100 ms by default), so each one delays a batch.
PRODUCE_RETRY = "NotEnoughReplicasError"


class BenchFailure(Exception):
    """The benchmark could not measure: a run failed or hung, a service died, a request was refused."""


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the broker ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broker:
    """The Kafka to use; ``local`` is the broker started here (None: the cluster in KAFKA_BOOTSTRAP_SERVERS)."""

    bootstrap: str
    local: LocalKafka | None

    @property
    def ours(self) -> bool:
        return self.local is not None

    def pid(self) -> int | None:
        """The local broker's java process (its ``kafka.pid``), None for a cluster elsewhere."""
        if self.local is None:
            return None
        try:
            return int((self.local.data_dir / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def log_dir(self) -> Path | None:
        """Where the local broker keeps its partitions (``data/`` of its folder, one folder a partition)."""
        return None if self.local is None else self.local.data_dir / "data"

    def topic_bytes(self, prefix: str) -> dict[str, int] | None:
        """The bytes of record batches each topic under ``prefix`` holds (its partitions' ``.log`` segment
        files; the indexes, preallocated sparse files, are left out); None for a cluster elsewhere."""
        log_dir = self.log_dir()
        if log_dir is None:
            return None
        sizes: dict[str, int] = {}
        for partition in log_dir.glob(f"{prefix}*-*"):
            topic = partition.name[len(prefix) :].rpartition("-")[0]
            sizes[topic] = sizes.get(topic, 0) + sum(segment.stat().st_size for segment in partition.glob("*.log"))
        return sizes


@contextlib.contextmanager
def broker(directory: Path) -> Iterator[Broker]:
    """The broker to use: one started here in ``directory/kafka`` and stopped at the end, or the cluster
    in ``KAFKA_BOOTSTRAP_SERVERS``."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        progress(f"using the Kafka cluster at {external} (KAFKA_BOOTSTRAP_SERVERS)")
        yield Broker(external, None)
        return
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    kafka = LocalKafka(data_dir=directory / "kafka", port=port, controller_port=controller_port)
    progress(f"starting a local Kafka broker on 127.0.0.1:{port}…")
    try:
        kafka.start()
        yield Broker(kafka.bootstrap_servers, kafka)
    finally:
        progress("stopping the Kafka broker…")
        kafka.stop()


async def delete_topics(bootstrap: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(list(TopicNames(prefix).all()))
    finally:
        await admin.close()


# -- the stack ----------------------------------------------------------------------------------


def _parent_death_signal() -> Any:
    """A preexec_fn asking Linux to SIGTERM a child when this process dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def set_signal() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return set_signal


class Stack:
    """The engine's services and the workflow app, each its own process, logging into ``directory``.

    ``env`` is added to every process's environment (services and app). With ``isolated``, the
    ``STEPSTREAM_*`` variables of this process's environment are not passed on, except the Kafka
    connection's (``STEPSTREAM_KAFKA_*``), so the services run with the engine's defaults plus ``env``.
    """

    def __init__(
        self,
        bootstrap: str,
        directory: Path,
        *,
        partitions: int,
        env: Mapping[str, str] | None = None,
        isolated: bool = False,
    ) -> None:
        self.directory = directory
        self.api_port = free_port()
        self.app_port = free_port()
        self.prefix = f"bench{uuid.uuid4().hex[:8]}."
        self.workflow_url = f"http://127.0.0.1:{self.app_port}/workflows/steps"
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.app_url = f"http://127.0.0.1:{self.app_port}"
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not (isolated and name.startswith("STEPSTREAM_") and not name.startswith("STEPSTREAM_KAFKA_"))
        }
        inherited.pop("STEPSTREAM_STEP_BUDGET_MS", None)  # a mode sets its own, or none for the default
        self.env = {
            **inherited,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STEPSTREAM_TOPIC_PREFIX": self.prefix,
            "STEPSTREAM_PARTITIONS": str(partitions),
            "STEPSTREAM_SIGNING_KEYS": uuid.uuid4().hex,
            # The benchmarks' clients send no token: the api open, on this machine only.
            "STEPSTREAM_API_AUTH": "none",
            "STEPSTREAM_HEADER_KEYS": new_key(),
            "STEPSTREAM_DATABASE": str(directory / "query.db"),
            "STEPSTREAM_HEALTH_PORT": "off",  # several services on one host; the bench does not probe them
            "STEPSTREAM_API_PORT": str(self.api_port),
            "STEPSTREAM_WORKFLOWS": f"steps={self.workflow_url}",
            "STEPSTREAM_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.exited: list[str] = []  # processes found dead when the stack was shut down
        self.log_problems: list[str] = []  # the logs' error lines, read when the stack was shut down
        self.log_noise = 0  # … and how many more were known start-up noise
        self._preexec = _parent_death_signal()

    def create_topics(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "stepstream.cli", "topics", "create"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise BenchFailure(f"could not create the topics:\n{result.stdout}{result.stderr}")

    def start(self, name: str, **extra_env: str) -> None:
        """Start a service (``projector``, ``scheduler``, ``executor``, ``api``) or an app of :data:`APPS`
        (on ``app_port``) as a process of its own."""
        if name in APPS:
            command = [sys.executable, "-m", "uvicorn", APPS[name], "--app-dir", str(BENCH_DIR),
                       "--host", "127.0.0.1", "--port", str(self.app_port), "--log-level", "warning"]  # fmt: skip
        else:
            command = [sys.executable, "-m", f"stepstream.{name}"]
        env = {**self.env, **extra_env}
        with (self.directory / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
            log.write(f"=== bench: starting {name} {' '.join(f'{k}={v}' for k, v in extra_env.items())}\n".encode())
            log.flush()
            # A session of its own: a Ctrl-C reaches only this process, which then stops the children in order.
            self.processes[name] = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=self._preexec,  # SIGTERM the child if this process dies
            )

    def stop(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        # The executor and the app first, so no call is left half-way; the api last but one.
        for name in ("executor", "app", "floor", "api", "scheduler", "projector", *list(self.processes)):
            self.stop(name)

    def shut_down(self) -> None:
        """Note which processes had died and the logs' error lines, then stop every process."""
        self.exited = self.dead()
        self.log_problems, self.log_noise = self.problems_in_logs()
        self.stop_all()

    def dead(self) -> list[str]:
        return [f"{name} (exit code {p.returncode})" for name, p in self.processes.items() if p.poll() is not None]

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.directory / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def problems_in_logs(self) -> tuple[list[str], int]:
        """Lines of the service logs that report an error, and how many of them are known start-up noise.

        aiokafka logs the broker's "coordinator not available (yet)" answers at ERROR while a group forms
        on a fresh broker; it retries by itself, so those lines are only counted.
        """
        lines = [
            f"{path.stem}: {line}"
            for path in sorted(self.directory.glob("*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
        ]
        serious = [line for line in lines if not any(noise in line for noise in STARTUP_NOISE)]
        return serious, len(lines) - len(serious)

    def log_sizes(self) -> dict[str, int]:
        return {path.stem: path.stat().st_size for path in self.directory.glob("*.log")}

    def count_in_logs_since(self, sizes: dict[str, int], needle: str) -> int:
        """Lines containing ``needle`` written to the service logs after ``sizes`` were taken."""
        count = 0
        for path in self.directory.glob("*.log"):
            with path.open("rb") as log:
                log.seek(sizes.get(path.stem, 0))
                count += sum(1 for line in log.read().decode(errors="replace").splitlines() if needle in line)
        return count

    def all_log_tails(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- tail of {self.directory / f'{name}.log'}\n{self.log_tail(name, lines)}"
            for name in ("projector", "scheduler", "executor", "api", "app", "floor")
            if (self.directory / f"{name}.log").exists()
        )


async def wait_for_http(url: str, stack: Stack, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            if stack.dead():
                raise BenchFailure(f"a process died while starting: {', '.join(stack.dead())}")
            await asyncio.sleep(0.1)
    raise BenchFailure(f"{url} did not answer within {within_s:.0f} s")


# -- a benchmark's session ----------------------------------------------------------------------


def raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored for a while: a second one must not cut a clean-up short."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


@dataclass(slots=True)
class Session:
    """A benchmark's temporary folder, the stacks it ran (for their logs on failure), and its exit code."""

    directory: Path
    keep: bool
    stacks: list[Stack] = field(default_factory=list)
    code: int = 1

    @contextlib.contextmanager
    def stack(
        self,
        kafka: Broker,
        *,
        partitions: int,
        folder: str | None = None,
        env: Mapping[str, str] | None = None,
        isolated: bool = False,
        topics: bool = True,
    ) -> Iterator[Stack]:
        """A :class:`Stack` logging into ``folder`` of the session's folder (or the folder itself), with its
        topics created (``topics``); at the end its processes are stopped, and its topics deleted from
        a cluster that is not ours."""
        directory = self.directory / folder if folder else self.directory
        directory.mkdir(parents=True, exist_ok=True)
        stack = Stack(kafka.bootstrap, directory, partitions=partitions, env=env, isolated=isolated)
        self.stacks.append(stack)
        try:
            if topics:
                progress(f"creating topics with prefix {stack.prefix!r} ({partitions} partitions)…")
                stack.create_topics()
            yield stack
        finally:
            with signals_ignored():
                stack.shut_down()
                if topics and not kafka.ours:
                    with contextlib.suppress(Exception):
                        asyncio.run(delete_topics(kafka.bootstrap, stack.prefix))

    def warn_about_logs(self) -> None:
        """Say on stderr what the stacks' logs reported as errors."""
        noise = sum(stack.log_noise for stack in self.stacks)
        problems = [line for stack in self.stacks for line in stack.log_problems]
        if noise:
            progress(
                f"(the service logs have {noise} transient coordinator errors from start-up; aiokafka retries them)"
            )
        if problems:
            print(f"\nwarning: the service logs have {len(problems)} error lines; the first ones:", file=sys.stderr)
            print("\n".join(problems[:20]), file=sys.stderr)


@contextlib.contextmanager
def session(prefix: str, *, keep: bool) -> Iterator[Session]:
    """A temporary folder for a benchmark, and its exit: the body sets ``code`` (0) when it succeeds; a
    failure is printed with the tails of the service logs and keeps the folder; Ctrl-C or SIGTERM stops
    everything (code 130). Without ``keep`` the folder is deleted after a success or an interruption."""
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)  # stop like Ctrl-C: clean up, then exit
    current = Session(Path(tempfile.mkdtemp(prefix=prefix)), keep)

    def log_tails() -> None:
        for stack in current.stacks:
            if stack.exited:
                print(f"processes that had exited: {', '.join(stack.exited)}", file=sys.stderr)
            print(stack.all_log_tails(), file=sys.stderr)

    try:
        yield current
    except (BenchFailure, httpx.HTTPError, aiohttp.ClientError) as failure:
        message = str(failure) if isinstance(failure, BenchFailure) else f"the api did not answer: {failure!r}"
        print(f"\nbenchmark failed: {message}", file=sys.stderr)
        log_tails()
        current.code, current.keep = 1, True
    except KeyboardInterrupt:
        print("\ninterrupted; stopped everything", file=sys.stderr)
        current.code = 130
    except Exception:  # e.g. no Java for the local broker: say what, keep the logs
        print("\nbenchmark failed:", file=sys.stderr)
        traceback.print_exc()
        log_tails()
        current.code, current.keep = 1, True
    finally:
        if current.keep:
            progress(f"kept {current.directory} (logs, query store)")
        else:
            shutil.rmtree(current.directory, ignore_errors=True)


def engine_commit() -> str | None:
    """The repository's HEAD commit (read only), so a result can be tied to the code it measured."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=BENCH_DIR, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return None
    return result.stdout.strip() or None


def write_json(path: Path, *, load_before: list[float] | float, parameters: dict[str, Any], **numbers: Any) -> None:
    """A benchmark's numbers as JSON at ``path``: the date, the machine (its load average before and
    now), the commit, the parameters, then ``numbers``."""
    document = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "load_average_before": load_before},
        "commit": engine_commit(),
        "parameters": parameters,
        **numbers,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    progress(f"wrote {path}")


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }


# -- /proc --------------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (``/proc/<pid>/stat``, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()  # the name, in parentheses, may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU seconds all of the machine's cores have been busy, and stolen by the hypervisor (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        fields = [int(field) for field in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]  # guest time is inside user
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


@dataclass(frozen=True, slots=True)
class Memory:
    """A process's resident memory, from /proc/<pid>/status, in kB: now, and its peak so far."""

    rss_kb: int
    hwm_kb: int


def memory(pid: int) -> Memory:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return Memory(rss_kb=fields["VmRSS"], hwm_kb=fields["VmHWM"])


# -- numbers and tables -------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": sum(values) / len(values),
    }


def describe_event(event: dict[str, Any]) -> str:
    details = {k: v for k, v in event.items() if k not in ("type", "run_id", "seq", "at_ms", "payload", "headers")}
    at = datetime.fromtimestamp(event["at_ms"] / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]
    return f"  {event['seq']:>4}  {at}  {event['type']:<14} {json.dumps(details, default=str)[:300]}"


def fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"1/{1 / value:.0f}x" if 0 < value < 0.1 else f"{fmt(value)}x"


def render(headers: list[str], rows: list[list[str]], *, left: tuple[int, ...] = (0,)) -> str:
    """A plain-text table; the columns in ``left`` aligned left (text), the others right (numbers)."""
    widths = [max(len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return " | ".join(
            c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), "-+-".join("-" * width for width in widths), *(line(row) for row in rows)])
