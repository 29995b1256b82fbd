"""``stepstream``: run the engine's services, a local broker, and talk to the api.

stepstream dev [--example]          the local stack in one process (starts a local Kafka)
stepstream projector|scheduler|executor|api
stepstream kafka start|stop|status  the local single-node Kafka
stepstream topics create            create the engine's topics
stepstream token new NAME --roles read,write,operate   an api token, and the line that configures it
stepstream trigger WORKFLOW [--payload JSON] [--run-id ID] [--delay 10s|--not-before TIME] [--watch|--wait] …
                   [--flow-key K [--rate N] [--period 1m] [--parallelism N]]
stepstream runs list|get|steps|history …
stepstream notify EVENT_ID [--data JSON]       stepstream waiters EVENT_ID
stepstream cancel RUN_ID | --workflow W | --label L | --created-before T | --all
stepstream deadletter list|resume|restart|delete [RUN_ID]
stepstream flow [KEY]                          flow-control keys: queued, in flight, limits
stepstream state|export|show|replay …          a run's history put to use (stepstream.history.cli)

Exit codes: 0 done; 1 a watched run failed or was cancelled, or watching gave up; 2 the command was
wrong, the api refused it, or the api could not be reached.

Watching and waiting do not poll: ``--watch`` and ``--follow`` read the api's history stream
(server-sent events), ``--wait`` asks the api to answer when the run has ended (``?wait=``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from stepstream import client
from stepstream.history import cli as history_commands

EXAMPLE_PORT = 8000


# -- local Kafka ------------------------------------------------------------------------------


def _local_kafka(home: Path, *, sasl_ssl: bool = False) -> Any:
    from stepstream.kafka.local import LocalKafka

    port = int(os.environ.get("STEPSTREAM_KAFKA_PORT", "9092"))
    # A secured broker is another cluster: its own data directory (its certificates and users in tls/).
    return LocalKafka(data_dir=home / ("kafka-sasl-ssl" if sasl_ssl else "kafka"), port=port, sasl_ssl=sasl_ssl)


def _bootstrap_or_local(home: Path, *, sasl_ssl: bool = False) -> tuple[str, Any]:
    """The cluster to use: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else the local broker, started now
    (with ``sasl_ssl``, one that requires SCRAM over TLS, and the services set to use it).

    Also returns the local broker if this call started it (so the caller may stop it), else None.
    """
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"], None
    from stepstream.errors import StepstreamError

    kafka = _local_kafka(home, sasl_ssl=sasl_ssl)
    was_running = kafka.is_running()
    try:
        kafka.start()
    except StepstreamError as error:
        client.fail(str(error))
    os.environ.update(kafka.client_env())  # its address, and its security settings when it has some
    return str(kafka.bootstrap_servers), None if was_running else kafka


def cmd_kafka(args: argparse.Namespace) -> None:
    from stepstream.config import default_home

    kafka = _local_kafka(default_home())
    if args.action == "start":
        bootstrap, _ = _bootstrap_or_local(default_home())
        print(f"Kafka is running at {bootstrap} (data in {kafka.data_dir}); stop it with `stepstream kafka stop`")
    elif args.action == "stop":
        kafka.stop()
        print("Kafka stopped")
    else:
        print(f"running at {kafka.bootstrap_servers}" if kafka.is_running() else "not running")


def cmd_topics(args: argparse.Namespace) -> None:
    import asyncio

    from stepstream.config import KafkaSettings
    from stepstream.runner import ensure_topics_for

    settings = KafkaSettings.from_env()
    asyncio.run(ensure_topics_for(settings))
    print(f"topics with prefix {settings.topic_prefix!r} are ready ({settings.partitions} partitions)")


# -- the local stack --------------------------------------------------------------------------


def _dev_secret(home: Path, name: str, make: Callable[[], str]) -> str:
    """A secret of the local stack (its signing key, header key, api token), made once in its home."""
    path = home / name
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def cmd_token(args: argparse.Namespace) -> None:
    from stepstream.tokens import ROLES, new_token, token_line

    roles = [role.strip() for role in args.roles.split(",") if role.strip()]
    if not roles or not set(roles) <= set(ROLES):
        client.fail(f"--roles: expected some of {', '.join(ROLES)}, comma-separated, but got {args.roles!r}")
    token = new_token()
    print(token)
    print(
        "The token (above, on stdout) is shown once: give it to whoever calls the api "
        "(STEPSTREAM_API_TOKEN for the CLI). Add this line to the api's STEPSTREAM_API_TOKENS or its "
        "tokens file; it holds only the token's hash:",
        file=sys.stderr,
    )
    print(f"    {token_line(args.name, roles, token)}", file=sys.stderr)


def cmd_dev(args: argparse.Namespace) -> None:
    import asyncio

    from stepstream.config import (
        ApiSettings,
        ExecutorSettings,
        KafkaSettings,
        ProjectorSettings,
        SchedulerSettings,
        default_home,
    )
    from stepstream.logs import configure_logging
    from stepstream.runner import ensure_topics_for, run_all
    from stepstream.sealing import new_key
    from stepstream.tokens import ROLES, new_token, token_line

    configure_logging()
    home = default_home()
    print(f"stepstream dev: state in {home}", file=sys.stderr)
    bootstrap, started_kafka = _bootstrap_or_local(home, sasl_ssl=args.sasl_ssl)
    os.environ.setdefault("STEPSTREAM_SIGNING_KEYS", _dev_secret(home, "signing.key", lambda: secrets.token_hex(32)))
    os.environ.setdefault("STEPSTREAM_HEADER_KEYS", _dev_secret(home, "header.key", new_key))
    api_token = None
    configured = ("STEPSTREAM_API_TOKENS", "STEPSTREAM_API_TOKENS_FILE", "STEPSTREAM_API_AUTH")
    if not any(os.environ.get(name) for name in configured):  # the api's own settings win
        api_token = _dev_secret(home, client.API_TOKEN_FILE, new_token)
        os.environ["STEPSTREAM_API_TOKENS"] = token_line("local", ROLES, api_token)
    example: subprocess.Popen[bytes] | None = None
    example_url = f"http://127.0.0.1:{EXAMPLE_PORT}/workflows/onboarding"
    order_url = f"http://127.0.0.1:{EXAMPLE_PORT}/workflows/order"
    if args.example:
        os.environ.setdefault("STEPSTREAM_WORKFLOWS", f"onboarding={example_url},order={order_url}")
        example = _start_example(home)
    os.environ.setdefault("STEPSTREAM_ALLOWED_URL_HOSTS", _dev_allowed_url_hosts())
    # A stack that wrote records in the Confluent format needs its registry to read them again.
    registry = _start_registry(home) if args.schema_registry or (home / "registry" / "db").exists() else None
    settings = KafkaSettings.from_env()
    asyncio.run(ensure_topics_for(settings))

    async def started() -> None:
        api_settings = ApiSettings.from_env()
        api = f"http://{api_settings.host}:{api_settings.port}"
        lines = [
            "",
            f"Stepstream is running: Kafka at {bootstrap}"
            + (" (SASL_SSL: SCRAM-SHA-512 over TLS)" if args.sasl_ssl else "")
            + f", api at {api}",
            f"Dashboard: {api}/ui/  (runs, a run's timeline and history, dead letters, flow control)",
            f"Metrics of all four services (Prometheus' text format): {api}/metrics",
        ]
        if api_token is not None:
            token_file = home / client.API_TOKEN_FILE
            lines += [
                f"The api wants a token: the local one is in {token_file} (every role). The CLI here reads it",
                "from there; the dashboard asks for it once; elsewhere: "
                f"export STEPSTREAM_API_TOKEN=$(cat {token_file})",
            ]
        if registry is not None:
            lines.append(f"Records in the Confluent wire format, their schemas in the registry at {registry.url}")
        if args.example:
            lines += [
                f"The example workflows 'onboarding' and 'order' are served at {example_url.rsplit('/', 1)[0]}",
                "In another terminal, trigger a run and watch its history:",
                '    .venv/bin/stepstream trigger onboarding --payload \'{"name": "Ada"}\' --watch',
                "Or an order, which waits for its payment until you notify it (from a third terminal):",
                '    .venv/bin/stepstream trigger order --payload \'{"order_id": "42"}\' --watch',
                "    .venv/bin/stepstream notify payment-42 --data '{\"amount\": 30}'",
            ]
        lines.append("Stop with Ctrl-C; runs survive a restart.\n")
        print("\n".join(lines), file=sys.stderr)

    try:
        asyncio.run(
            run_all(
                ProjectorSettings.from_env(),
                SchedulerSettings.from_env(),
                ExecutorSettings.from_env(),
                ApiSettings.from_env(),
                started=started,
            )
        )
    except KeyboardInterrupt:
        pass
    finally:
        if example is not None:
            example.terminate()
            example.wait(timeout=10)
        if registry is not None:
            registry.stop()
        if started_kafka is not None:
            print("stepstream dev: stopping the local Kafka (its data stays in place)", file=sys.stderr)
            started_kafka.stop()


def _start_registry(home: Path) -> Any:
    """A local schema registry (Apicurio, its schemas kept under ``home``), and every service set to
    write the Confluent wire format with it: what Kafka Connect, ksqlDB and Kafka UIs read."""
    from stepstream.avro.local_registry import LocalRegistry, RegistryProvisioningError

    registry = LocalRegistry(home / "registry")
    print("stepstream dev: starting a local schema registry (Apicurio; the first start downloads it)", file=sys.stderr)
    try:
        registry.start()
    except RegistryProvisioningError as error:
        client.fail(str(error))
    os.environ["STEPSTREAM_SCHEMA_REGISTRY_URL"] = registry.url
    os.environ.setdefault("STEPSTREAM_RECORD_FORMAT", "confluent")
    return registry


def _dev_allowed_url_hosts() -> str:
    """Where the local stack delivers unless told otherwise: this machine, and the hosts of the
    registered workflows (what a deployment allows by default)."""
    from stepstream.config import allowed_url_hosts

    registered = str(allowed_url_hosts({"STEPSTREAM_WORKFLOWS": os.environ.get("STEPSTREAM_WORKFLOWS", "")}))
    return ",".join(dict.fromkeys(host for host in ("127.0.0.1", "localhost", "[::1]", *registered.split(",")) if host))


def _start_example(home: Path) -> subprocess.Popen[bytes]:
    examples = Path(__file__).resolve().parents[2] / "examples"
    if not (examples / "app.py").exists():
        client.fail(f"the example app is not at {examples / 'app.py'} (run from a source checkout)")
    log_path = home / "example-app.log"
    print(f"stepstream dev: starting the example app on port {EXAMPLE_PORT} (log: {log_path})", file=sys.stderr)
    log_file = log_path.open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app:app",
            "--app-dir",
            str(examples),
            "--port",
            str(EXAMPLE_PORT),
            "--log-level",
            "warning",
        ],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        # Where the engine reaches it, so it accepts only deliveries signed for itself (docs/sdk.md).
        env={
            **os.environ,
            "STEPSTREAM_BASE_URL": os.environ.get(
                "STEPSTREAM_BASE_URL", f"http://127.0.0.1:{EXAMPLE_PORT},http://localhost:{EXAMPLE_PORT}"
            ),
        },
    )


def cmd_service(args: argparse.Namespace) -> None:
    from stepstream import config, runner

    name = args.command
    readers: dict[str, Callable[[], Any]] = {
        "projector": config.ProjectorSettings.from_env,
        "scheduler": config.SchedulerSettings.from_env,
        "executor": config.ExecutorSettings.from_env,
        "api": config.ApiSettings.from_env,
    }
    build = getattr(runner, f"{name}_service")
    try:
        settings = readers[name]()
    except config.ConfigurationError as error:
        client.fail(str(error))
    runner.run_service(name, lambda: build(settings))


def _header(value: str) -> tuple[str, str]:
    name, separator, header_value = value.partition(":")
    if not separator:
        name, separator, header_value = value.partition("=")
    if not separator or not name.strip():
        client.fail(f"--header: expected 'Name: value', but got {value!r}")
    return name.strip(), header_value.strip()


def _clock(at_ms: int | None, *, date: bool = False) -> str:
    if at_ms is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", time.localtime(at_ms / 1000))
    return f"{stamp}.{at_ms % 1000:03d}" if not date else stamp


def cmd_trigger(args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"workflow": args.workflow, "payload": client.json_option(args.payload, "--payload")}
    for name in ("url", "run_id", "label", "retries", "retry_delay", "failure_url", "delay", "delay_ms"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    if args.not_before is not None:
        body["not_before"] = client.instant(args.not_before, "--not-before")
    if args.header:
        body["headers"] = dict(_header(value) for value in args.header)
    limits = {name: value for name in ("rate", "period", "parallelism") if (value := getattr(args, name)) is not None}
    if args.flow_key is not None:
        body["flow_control"] = {"key": args.flow_key, **limits}
    elif limits:
        given = ", ".join(f"--{name}" for name in limits)
        client.fail(f"{given} limit the runs under a flow-control key: give one with --flow-key")
    deadline = time.monotonic() + args.timeout
    params = {"wait": _wait_param(args.timeout)} if args.wait else {}
    response = client.request("POST", "/v1/runs", json=body, params=params, timeout=_wait_timeout(params))
    answer = response.json()
    print(answer["run_id"])
    if answer.get("duplicate"):
        status = (answer.get("run") or answer).get("status", "known")
        print(f"run {answer['run_id']} already exists ({status}): nothing new was started", file=sys.stderr)
    if answer.get("not_before_ms"):
        print(f"its first step is due at {_clock(answer['not_before_ms'], date=True)}", file=sys.stderr)
    if args.watch:
        _watch(answer["run_id"], timeout_s=args.timeout)
    elif args.wait:
        run = answer if response.status_code == 200 else _wait_for_end(answer["run_id"], deadline, args.timeout)
        _print_result(run)


def _seconds(milliseconds: int) -> str:
    return f"{milliseconds / 1000:.1f} s"


def _describe(event: dict[str, Any]) -> str:
    """One readable line for an event of the history."""
    kind = str(event["type"])
    step = f"step {event.get('step_index')}"
    if kind == "RunStarted":
        parent = f" (invoked by {event['parent_run_id']})" if event.get("parent_run_id") else ""
        return f"run of {event['workflow']!r} started with payload {json.dumps(event['payload'])}{parent}"
    if kind == "StepScheduled":
        if event.get("execute_only"):
            return (
                f"delivery {event['delivery_id']} scheduled for parallel {step} {event.get('name')!r} "
                f"(attempt {event['attempt']})"
            )
        return f"delivery {event['delivery_id']} scheduled ({step}, attempt {event['attempt']})"
    if kind == "StepCompleted":
        return f"{event['kind']} {step} {event['name']!r} completed → {json.dumps(event['output'])}"
    if kind == "StepFailed":
        retry = f", retry at {_clock(event['retry_at_ms'])}" if event.get("retry_at_ms") else ", no retry left"
        return f"{step} attempt {event['attempt']} failed: {event['error']['message']}{retry}"
    if kind == "SleepStarted":
        wakes = _seconds(event["wake_at_ms"] - event["at_ms"])
        return f"{event['kind']} {step} {event['name']!r} started: wakes in {wakes}"
    if kind == "CallStarted":
        call = event["call"]
        return f"call {step} {event['name']!r} started: {call['method']} {call['url']}"
    if kind == "CallRetried":
        answer = f"answered {event['status']}" if event["status"] else "got no answer"
        if event["error"] != answer:
            answer += f" ({event['error']})"
        return f"call {step} attempt {event['attempt']} {answer}; retry at {_clock(event['retry_at_ms'])}"
    if kind == "WaitStarted":
        timeout = _seconds(event["timeout_at_ms"] - event["at_ms"])
        return f"wait {step} {event['name']!r} waits for event {event['event_id']!r} (times out in {timeout})"
    if kind == "EventReceived":
        return f"wait {step} received event {event['event_id']!r} → {json.dumps(event['data'])}{_by(event)}"
    if kind == "WaitTimedOut":
        return f"wait {step} timed out waiting for event {event['event_id']!r}"
    if kind == "NotifyStarted":
        return f"notify {step} {event['name']!r} notifies event {event['event_id']!r} with {json.dumps(event['data'])}"
    if kind == "InvokeStarted":
        return f"invoke {step} {event['name']!r} started child run {event['child_run_id']} of {event['workflow']!r}"
    if kind == "RunCompleted":
        return f"run completed → {json.dumps(event['output'])}"
    if kind == "RunFailed":
        return f"run failed: {event['error']['type']}: {event['error']['message']}"
    if kind == "RunCancelled":
        return "run cancelled" + _by(event) + (f": {event['reason']}" if event.get("reason") else "")
    if kind == "ResultIgnored":
        return f"ignored, the run was cancelled: {event['what']}"
    if kind == "FailureHandlerScheduled":
        return (
            f"failure handler scheduled: {event['url']} (delivery {event['delivery_id']}, attempt {event['attempt']})"
        )
    if kind == "FailureHandled":
        if event.get("error") is None:
            return "failure handler answered"
        retry = f", retry at {_clock(event['retry_at_ms'])}" if event.get("retry_at_ms") else ", no retry left"
        return f"failure handler attempt {event['attempt']} failed: {event['error']['message']}{retry}"
    if kind == "RunRecovered":
        done = {"resume": "resumed", "restart": "restarted", "delete": "deleted from the dead-letter list"}
        reason = f": {event['reason']}" if event.get("reason") else ""
        return f"run {done.get(event['action'], event['action'])}{_by(event) or ' by an operator'}{reason}"
    return kind


def _by(event: dict[str, Any]) -> str:
    """Who asked for what the event records (the audit trail, docs/history.md), when it says."""
    return f" by {event['actor']}" if event.get("actor") else ""


# The longest event type, FailureHandlerScheduled: every history line's description starts aligned.
TYPE_WIDTH = 23


def _print_event(event: dict[str, Any]) -> None:
    description = _one_line(_describe(event))
    print(f"{event['seq']:>4}  {_clock(event['at_ms'])}  {event['type']:<{TYPE_WIDTH}} {description}")


def _one_line(text: str) -> str:
    """``text`` on one line: an endpoint's multi-line error would break a one-line-per-row listing."""
    return " ".join(text.split())


ENDING_EVENTS = {"RunCompleted": 0, "RunFailed": 1, "RunCancelled": 1}
ENDED_STATUSES = {"completed": 0, "failed": 1, "cancelled": 1}
# The longest a request may wait for a run (the api's bound); a longer --timeout waits again.
MAX_WAIT_S = 300
# A stream that says nothing for this long is taken for broken (the api sends a keep-alive every 15 s).
STREAM_SILENCE_S = 30


def _watch(run_id: str, timeout_s: float) -> None:
    """Print the run's history as it grows, until it ends: exit 0 if it completed, 1 if it failed or was cancelled.

    Reads the api's history stream; a connection that breaks is opened again after the last event seen.
    """
    import httpx

    base = client.base()
    path = f"{base}/v1/runs/{client.segment(run_id)}/history/stream"
    seen = 0
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        timeout = httpx.Timeout(10, read=min(remaining, STREAM_SILENCE_S))
        try:
            with httpx.stream(
                "GET", path, params={"after_seq": seen}, timeout=timeout, headers=client.auth_headers()
            ) as response:
                if response.status_code == 404:  # the api waited a while for the run to appear
                    time.sleep(min(0.5, remaining))  # an api that answers at once is not asked in a loop
                    continue
                if response.status_code >= 400:
                    response.read()
                    client.fail(f"{response.status_code}: {client.detail(response)}")
                for kind, event in _server_sent(response.iter_lines(), deadline):
                    if kind == "end":  # the run has ended (its ending event came first, unless it was seen)
                        raise SystemExit(ENDED_STATUSES.get(event["status"], 1))
                    _print_event(event)
                    seen = event["seq"]
                    if event["type"] in ENDING_EVENTS:
                        if ENDING_EVENTS[event["type"]]:
                            raise SystemExit(ENDING_EVENTS[event["type"]])
                        return
        except httpx.ConnectError as error:
            client.fail(f"cannot reach the api at {base}: {error}")
        except (httpx.TimeoutException, httpx.TransportError):
            continue  # silent too long, or broken: open it again after the last event seen
    client.fail(f"gave up watching {run_id} after {timeout_s:.0f} s; it may still be running", code=1)


def _server_sent(lines: Iterable[str], deadline: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """The messages of a history stream as (``message`` or ``end``, its data), until ``deadline``. (The api
    sends each message's data as one ``data:`` line; lines starting with ``:`` are keep-alives.)"""
    name, data = "message", None
    for line in lines:
        if time.monotonic() >= deadline:
            return
        if line.startswith("event:"):
            name = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data = line.removeprefix("data:").strip()
        elif not line and data is not None:
            yield name, json.loads(data)
            name, data = "message", None


def _wait_param(timeout_s: float) -> str:
    """How long one request waits for a run, as the api takes it: the --timeout, at most the api's bound."""
    return f"{max(0, round(min(timeout_s, MAX_WAIT_S) * 1000))}ms"


def _wait_timeout(params: dict[str, str]) -> float:
    """The client's own timeout for a request that may wait ``params['wait']``."""
    return 10 + (int(params["wait"].removesuffix("ms")) / 1000 if "wait" in params else 0)


def _wait_for_end(run_id: str, deadline: float, timeout_s: float) -> dict[str, Any]:
    """The run once it has ended, asking the api to wait (at most 5 minutes a request) until ``deadline``."""
    while (remaining := deadline - time.monotonic()) > 0:
        params = {"wait": _wait_param(remaining)}
        response = client.request(
            "GET", f"/v1/runs/{client.segment(run_id)}", params=params, timeout=_wait_timeout(params)
        )
        if response.status_code == 200:
            run: dict[str, Any] = response.json()
            return run
    client.fail(
        f"gave up waiting for {run_id} after {timeout_s:.0f} s; it is still going: "
        f"follow it with `stepstream runs history {run_id} --follow`",
        code=1,
    )


def _print_result(run: dict[str, Any]) -> None:
    """A run that has ended: its output on stdout (exit 0), or why it did not complete (exit 1)."""
    if run["status"] == "completed":
        print(json.dumps(run["output"], indent=2))
        return
    if run["status"] == "failed":
        error = run.get("error") or {}
        print(f"run {run['run_id']} failed: {error.get('type')}: {error.get('message')}", file=sys.stderr)
    else:
        reason = f": {run['cancel_reason']}" if run.get("cancel_reason") else ""
        print(f"run {run['run_id']} was cancelled{reason}", file=sys.stderr)
    raise SystemExit(ENDED_STATUSES.get(run["status"], 1))


def _run_filters(args: argparse.Namespace) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for name in ("workflow", "label"):
        if getattr(args, name, None):
            query[name] = getattr(args, name)
    if getattr(args, "since", None):
        query["created_after"] = client.instant(args.since, "--since", ago=True)
    if getattr(args, "until", None):
        query["created_before"] = client.instant(args.until, "--until", ago=True)
    return query


def _print_runs(answer: dict[str, Any], *, errors: bool = False) -> None:
    runs = answer["runs"]
    # Columns as wide as this page's longest value: run ids and workflow names are the caller's own.
    id_width = max((len(run["run_id"]) for run in runs), default=0)
    workflow_width = max((len(run["workflow"]) for run in runs), default=0)
    for run in runs:
        line = (
            f"{run['run_id']:<{id_width}}  {run['workflow']:<{workflow_width}}  {run['status']:<10} "
            f"{run['steps']:>3} steps  {_clock(run['created_at_ms'], date=True)}"
        )
        if errors and run.get("error"):
            line += f"  {run['error']['type']}: {_one_line(run['error']['message'])}"
        print(line)
    if not answer["runs"]:
        print("no runs match", file=sys.stderr)
    if answer.get("next_cursor"):
        print(f"more: add --cursor {answer['next_cursor']}", file=sys.stderr)


def _page_query(args: argparse.Namespace) -> dict[str, Any]:
    query = {**_run_filters(args), "limit": args.limit}
    if args.cursor:
        query["cursor"] = args.cursor
    return query


def _step_line(step: dict[str, Any]) -> str:
    detail = step.get("detail") or {}
    if step["status"] == "completed":
        what = f"→ {json.dumps(step['output'])}"
    elif step["kind"] in ("sleep", "sleep_until"):
        what = f"wakes at {_clock(detail.get('wake_at_ms'), date=True)}"
    elif step["kind"] == "wait_for_event":
        what = f"waits for event {detail.get('event_id')!r} until {_clock(detail.get('timeout_at_ms'), date=True)}"
    elif step["kind"] == "call":
        what = f"{detail.get('method')} {detail.get('url')}, attempt {detail.get('attempt')}"
    elif step["kind"] == "notify":
        what = f"notifying event {detail.get('event_id')!r}"
    elif step["kind"] == "invoke":
        what = f"child run {detail.get('child_run_id')}"
    else:
        what = "running"
    return f"{step['index']:>4}  {step['kind']:<14} {step['status']:<9}  {step['name']!r}  {what}"


def cmd_runs(args: argparse.Namespace) -> None:
    if args.action == "list":
        query = _page_query(args)
        if args.status:
            query["status"] = args.status
        if args.dead_letter:
            query["dead_letter"] = "true"
        _print_runs(client.api("GET", "/v1/runs", params=query))
    elif args.action == "get":
        print(json.dumps(client.api("GET", f"/v1/runs/{client.segment(args.run_id)}"), indent=2))
    elif args.action == "steps":
        steps = client.api("GET", f"/v1/runs/{client.segment(args.run_id)}/steps")["steps"]
        for step in steps:
            print(_step_line(step))
        if not steps:
            print(f"run {args.run_id} has no steps yet", file=sys.stderr)
    elif args.follow:
        _watch(args.run_id, timeout_s=args.timeout)
    else:
        for event in client.api("GET", f"/v1/runs/{client.segment(args.run_id)}/history")["events"]:
            _print_event(event)


def cmd_notify(args: argparse.Namespace) -> None:
    data = client.json_option(args.data, "--data")
    answer = client.api("POST", f"/v1/events/{client.segment(args.event_id)}/notify", json={"data": data})
    for run_id in answer["waiting"]:
        print(run_id)
    if not answer["waiting"]:
        print(answer["message"], file=sys.stderr)


def cmd_waiters(args: argparse.Namespace) -> None:
    waiters = client.api("GET", f"/v1/events/{client.segment(args.event_id)}/waiters")["waiters"]
    for waiter in waiters:
        print(
            f"{waiter['run_id']}  step {waiter['step_index']}  waiting since {_clock(waiter['since_ms'], date=True)}"
            f"  times out at {_clock(waiter['timeout_at_ms'], date=True)}"
        )
    if not waiters:
        print(f"no run is waiting on event {args.event_id!r}", file=sys.stderr)


def _optional_instant(value: str | None, option: str) -> int | None:
    return None if value is None else client.instant(value, option)


def cmd_cancel(args: argparse.Namespace) -> None:
    criteria = {
        "workflow": args.workflow,
        "label": args.label,
        "created_after": None if args.created_after is None else client.instant(args.created_after, "--created-after"),
        "created_before": None
        if args.created_before is None
        else client.instant(args.created_before, "--created-before"),
    }
    chosen = {name: value for name, value in criteria.items() if value is not None}
    reason = {"reason": args.reason} if args.reason is not None else {}
    if args.run_id is not None:
        if chosen or args.all:
            client.fail(
                "give a run id, or filters (--workflow, --label, --created-after, --created-before, --all), not both"
            )
        answer = client.api("POST", f"/v1/runs/{client.segment(args.run_id)}/cancel", json=reason)
        print(answer["message"], file=sys.stderr)
        return
    if not chosen and not args.all:
        client.fail(
            "give a run id, or at least one of --workflow, --label, --created-after, --created-before, or --all"
        )
    answer = client.api("POST", "/v1/runs/cancel", json={**chosen, **reason, "all": args.all})
    for run_id in answer["cancelled"]:
        print(run_id)
    count = answer["count"]
    runs, them = ("1 run", "it") if count == 1 else (f"{count} runs", "them")
    print(
        f"Cancel of {runs} requested: nothing more is scheduled for {them}, and results that arrive later are ignored",
        file=sys.stderr,
    )


def cmd_deadletter(args: argparse.Namespace) -> None:
    if args.action == "list":
        _print_runs(client.api("GET", "/v1/deadletter", params=_page_query(args)), errors=True)
        return
    if args.run_id is None:
        client.fail(f"`stepstream deadletter {args.action}` needs a run id")
    path = f"/v1/deadletter/{client.segment(args.run_id)}"
    # The run's history keeps the reason beside the action, and who asked.
    body = {"reason": args.reason} if args.reason is not None else None
    if args.action == "delete":
        client.api("DELETE", path, json=body)
        print(f"run {args.run_id} is being taken off the dead-letter list (it and its history stay)", file=sys.stderr)
    else:
        client.api("POST", f"{path}/{args.action}", json=body)
        print(f"run {args.run_id}: {args.action} requested", file=sys.stderr)


def _duration(milliseconds: int) -> str:
    """Milliseconds as the api writes durations: ``1m``, ``1h30m``, ``250ms``."""
    parts: list[str] = []
    rest = milliseconds
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0ms"


def _print_flow_keys(keys: list[dict[str, Any]]) -> None:
    """The keys as a table; each row as the scheduler last published it (the UPDATED column)."""
    rows = [
        (
            key["key"],
            str(key["queued"]),
            str(key["in_flight"]) + (f"/{key['parallelism']}" if key["parallelism"] is not None else ""),
            f"{key['starts_in_window']}/{key['rate']}" if key["rate"] is not None else str(key["starts_in_window"]),
            _duration(key["period_ms"]),
            _clock(key["updated_at_ms"], date=True),
        )
        for key in keys
    ]
    header = ("KEY", "QUEUED", "IN FLIGHT", "STARTED", "PER", "UPDATED")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    numbers = {1, 2, 3}  # right-aligned; the rest left-aligned
    for row in [header, *rows]:
        cells = [
            cell.rjust(width) if column in numbers else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def cmd_flow(args: argparse.Namespace) -> None:
    if args.key is not None:
        _print_flow_keys([client.api("GET", f"/v1/flow-control/{client.segment(args.key)}")])
        return
    query: dict[str, Any] = {"limit": args.limit}
    if args.cursor:
        query["cursor"] = args.cursor
    answer = client.api("GET", "/v1/flow-control", params=query)
    if answer["flow_keys"]:
        _print_flow_keys(answer["flow_keys"])
    else:
        print("no flow-control key is known yet (a key shows once the scheduler has work under it)", file=sys.stderr)
    if answer.get("next_cursor"):
        print(f"more: add --cursor {answer['next_cursor']}", file=sys.stderr)


# -- the command line -------------------------------------------------------------------------


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workflow")
    parser.add_argument("--label")
    parser.add_argument("--since", help="created at or after: '2h' (ago), epoch ms or ISO-8601")
    parser.add_argument("--until", help="created before: '30m' (ago), epoch ms or ISO-8601")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--cursor", help="the next page, as a previous page said")


def _add_trigger(commands: Any) -> None:
    trigger = commands.add_parser("trigger", help="start a run through the api")
    trigger.add_argument("workflow")
    trigger.add_argument("--payload", help="the run's payload as JSON")
    trigger.add_argument("--url", help="the workflow endpoint, if the api has none registered for it")
    trigger.add_argument("--run-id", help="choose the run id (a second trigger with it starts nothing)")
    trigger.add_argument("--label")
    trigger.add_argument("--retries", type=int, help="retries of a failed step (default: the engine's)")
    trigger.add_argument("--retry-delay", help="a delay rule for retries, such as '1000 * pow(2, retried)'")
    trigger.add_argument("--failure-url", help="where the failure handler is called (default: the workflow's url)")
    trigger.add_argument(
        "--header", action="append", default=[], help="'Name: value', sent with every delivery (repeatable)"
    )
    when = trigger.add_mutually_exclusive_group()
    when.add_argument("--delay", help="start after a duration such as '10s', '5m' or '1h30m'")
    when.add_argument("--delay-ms", type=int, help="start after this many milliseconds")
    when.add_argument("--not-before", help="start no earlier than this time: epoch ms or ISO-8601 (local if no zone)")
    flow = trigger.add_argument_group("flow control", "limits shared by every run triggered under the same key")
    flow.add_argument("--flow-key", help="the flow-control key the run's deliveries wait under")
    flow.add_argument("--rate", type=int, help="at most this many starts per period")
    flow.add_argument("--period", help="the rate's window, a duration such as '10s' or '1m' (default 1s)")
    flow.add_argument("--parallelism", type=int, help="at most this many deliveries in flight at once")
    until = trigger.add_mutually_exclusive_group()
    until.add_argument("--watch", action="store_true", help="print the run's history as it happens")
    until.add_argument("--wait", action="store_true", help="wait for the run to end and print its output")
    trigger.add_argument("--timeout", type=float, default=600, help="how long --watch or --wait waits (seconds)")
    trigger.set_defaults(handler=cmd_trigger)


def _add_runs(commands: Any) -> None:
    runs = commands.add_parser("runs", help="list runs, show one, its steps or its history")
    actions = runs.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="runs, newest first")
    listing.add_argument(
        "--status",
        action="append",
        choices=["running", "sleeping", "waiting", "completed", "failed", "cancelled"],
        help="repeatable: runs in any of these",
    )
    listing.add_argument("--dead-letter", action="store_true", help="only failed runs in the dead-letter list")
    _add_filters(listing)
    for name, text in (("get", "one run as JSON"), ("steps", "a run's steps"), ("history", "a run's events")):
        action = actions.add_parser(name, help=text)
        action.add_argument("run_id")
        if name == "history":
            action.add_argument("--follow", action="store_true", help="keep printing until the run ends")
            action.add_argument("--timeout", type=float, default=600)
    runs.set_defaults(handler=cmd_runs)


def _add_events_and_control(commands: Any) -> None:
    notify = commands.add_parser("notify", help="notify an event id: wake the runs waiting on it")
    notify.add_argument("event_id")
    notify.add_argument("--data", help="the notification's data as JSON (default: null)")
    notify.set_defaults(handler=cmd_notify)
    waiters = commands.add_parser("waiters", help="the runs waiting on an event id")
    waiters.add_argument("event_id")
    waiters.set_defaults(handler=cmd_waiters)
    cancel = commands.add_parser("cancel", help="cancel a run, or every run matching filters that has not ended")
    cancel.add_argument("run_id", nargs="?")
    cancel.add_argument("--reason")
    cancel.add_argument("--workflow")
    cancel.add_argument("--label")
    cancel.add_argument("--created-after", help="epoch ms or ISO-8601 (local if no zone)")
    cancel.add_argument("--created-before", help="epoch ms or ISO-8601 (local if no zone)")
    cancel.add_argument("--all", action="store_true", help="every run that has not ended")
    cancel.set_defaults(handler=cmd_cancel)
    deadletter = commands.add_parser("deadletter", help="failed runs: list, resume, restart or delete them")
    deadletter.add_argument("action", choices=["list", "resume", "restart", "delete"])
    deadletter.add_argument("run_id", nargs="?")
    deadletter.add_argument("--reason", help="why, kept in the run's history with the action")
    _add_filters(deadletter)
    deadletter.set_defaults(handler=cmd_deadletter)
    flow = commands.add_parser("flow", help="flow-control keys: work queued and in flight, starts, limits")
    flow.add_argument("key", nargs="?", help="show only this key")
    flow.add_argument("--limit", type=int, default=100)
    flow.add_argument("--cursor", help="the next page, as a previous page said")
    flow.set_defaults(handler=cmd_flow)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="stepstream", description="A durable workflow engine on Apache Kafka.")
    commands = root.add_subparsers(dest="command", required=True)
    dev = commands.add_parser("dev", help="run the local stack (Kafka and all four services) in one process")
    dev.add_argument("--example", action="store_true", help="also start the example workflow app on port 8000")
    dev.add_argument(
        "--sasl-ssl",
        action="store_true",
        help="run the local Kafka requiring SASL/SCRAM over TLS, as a locked-down cluster does (docs/security.md)",
    )
    dev.add_argument(
        "--schema-registry",
        action="store_true",
        help="also run a local schema registry and write records in the Confluent wire format (docs/history.md)",
    )
    dev.set_defaults(handler=cmd_dev)
    for name in ("projector", "scheduler", "executor", "api"):
        commands.add_parser(name, help=f"run the {name} service alone").set_defaults(handler=cmd_service)
    kafka = commands.add_parser("kafka", help="the local single-node Apache Kafka")
    kafka.add_argument("action", choices=["start", "stop", "status"])
    kafka.set_defaults(handler=cmd_kafka)
    token = commands.add_parser("token", help="make an api token: prints it, and the line that configures it")
    token.add_argument("action", choices=["new"])
    token.add_argument("name", help="who holds it: recorded as the actor of what they do")
    token.add_argument("--roles", required=True, help="comma-separated: read, write, operate")
    token.set_defaults(handler=cmd_token)
    topics = commands.add_parser("topics", help="create the engine's topics")
    topics.add_argument("action", choices=["create"])
    topics.set_defaults(handler=cmd_topics)
    _add_trigger(commands)
    _add_runs(commands)
    _add_events_and_control(commands)
    history_commands.add_commands(commands)
    return root


def main(argv: list[str] | None = None) -> None:
    try:
        args = parser().parse_args(argv)
        args.handler(args)
    except BrokenPipeError:
        # The reader stopped reading (`stepstream runs history RUN | head -5`): not an error of ours.
        # stdout goes to /dev/null so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


if __name__ == "__main__":
    main()
