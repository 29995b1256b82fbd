"""``stepstream``: run the engine's services, a local broker, and talk to the api.

stepstream dev [--example]          the local stack in one process (starts a local Kafka)
stepstream projector|scheduler|executor|api
stepstream kafka start|stop|status  the local single-node Kafka
stepstream topics create            create the engine's topics
stepstream trigger WORKFLOW [--payload JSON] [--url URL] [--run-id ID] [--watch]
stepstream runs list|get|history …
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

API_URL_DEFAULT = "http://127.0.0.1:8080"
EXAMPLE_PORT = 8000


def _fail(message: str, code: int = 2) -> None:
    print(f"stepstream: {message}", file=sys.stderr)
    raise SystemExit(code)


# -- local Kafka ------------------------------------------------------------------------------


def _local_kafka(home: Path) -> Any:
    from stepstream.kafka.local import LocalKafka

    port = int(os.environ.get("STEPSTREAM_KAFKA_PORT", "9092"))
    return LocalKafka(data_dir=home / "kafka", port=port)


def _bootstrap_or_local(home: Path) -> tuple[str, Any]:
    """The cluster to use: ``KAFKA_BOOTSTRAP_SERVERS`` if set, else the local broker, started now.

    Also returns the local broker if this call started it (so the caller may stop it), else None.
    """
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"], None
    from stepstream.errors import StepstreamError

    kafka = _local_kafka(home)
    was_running = kafka.is_running()
    try:
        kafka.start()
    except StepstreamError as error:
        _fail(str(error))
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = kafka.bootstrap_servers
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


def _dev_signing_key(home: Path) -> str:
    path = home / "signing.key"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


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
    from stepstream.runner import configure_logging, ensure_topics_for, run_all

    configure_logging()
    home = default_home()
    print(f"stepstream dev: state in {home}", file=sys.stderr)
    bootstrap, started_kafka = _bootstrap_or_local(home)
    os.environ.setdefault("STEPSTREAM_SIGNING_KEYS", _dev_signing_key(home))
    example: subprocess.Popen[bytes] | None = None
    example_url = f"http://127.0.0.1:{EXAMPLE_PORT}/workflows/onboarding"
    if args.example:
        os.environ.setdefault("STEPSTREAM_WORKFLOWS", f"onboarding={example_url}")
        example = _start_example(home)
    settings = KafkaSettings.from_env()
    asyncio.run(ensure_topics_for(settings))

    async def started() -> None:
        api_settings = ApiSettings.from_env()
        api = f"http://{api_settings.host}:{api_settings.port}"
        lines = [
            "",
            f"Stepstream is running: Kafka at {bootstrap}, api at {api}",
        ]
        if args.example:
            lines += [
                f"The example workflow 'onboarding' is served at {example_url}",
                "In another terminal, trigger a run and watch its history:",
                '    .venv/bin/stepstream trigger onboarding --payload \'{"name": "Ada"}\' --watch',
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
        if started_kafka is not None:
            print("stepstream dev: stopping the local Kafka (its data stays in place)", file=sys.stderr)
            started_kafka.stop()


def _start_example(home: Path) -> subprocess.Popen[bytes]:
    examples = Path(__file__).resolve().parents[2] / "examples"
    if not (examples / "app.py").exists():
        _fail(f"the example app is not at {examples / 'app.py'} (run from a source checkout)")
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
    tasks = getattr(runner, f"{name}_tasks")
    try:
        settings = readers[name]()
    except config.ConfigurationError as error:
        _fail(str(error))
    runner.run_service(name, lambda: tasks(settings))


# -- the api's client -------------------------------------------------------------------------


def _api(method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    base = os.environ.get("STEPSTREAM_API_URL", API_URL_DEFAULT)
    try:
        response = httpx.request(method, base + path, timeout=10, **kwargs)
    except httpx.HTTPError as error:
        _fail(f"cannot reach the api at {base}: {error} (is `stepstream dev` or `stepstream api` running?)")
    if response.status_code >= 400:
        try:
            detail = response.json().get("message", response.text)
        except ValueError:
            detail = response.text
        _fail(f"{response.status_code}: {detail}")
    return response.json()


def cmd_trigger(args: argparse.Namespace) -> None:
    try:
        payload = json.loads(args.payload) if args.payload is not None else None
    except ValueError as error:
        _fail(f"--payload is not valid JSON: {error}")
    body: dict[str, Any] = {"workflow": args.workflow, "payload": payload}
    for name in ("url", "run_id", "label", "retries", "delay_ms"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    answer = _api("POST", "/v1/runs", json=body)
    print(answer["run_id"] + ("  (already triggered)" if answer.get("duplicate") else ""))
    if args.watch:
        _watch(answer["run_id"], timeout_s=args.timeout)


def _describe(event: dict[str, Any]) -> str:
    kind = str(event["type"])
    if kind == "StepCompleted":
        return f"{event['kind']} step {event['step_index']} {event['name']!r} completed → {json.dumps(event['output'])}"
    if kind == "StepScheduled":
        return f"delivery {event['delivery_id']} scheduled (step {event['step_index']}, attempt {event['attempt']})"
    if kind == "SleepStarted":
        seconds = (event["wake_at_ms"] - event["at_ms"]) / 1000
        return f"{event['kind']} step {event['step_index']} {event['name']!r} started: wakes in {seconds:.1f} s"
    if kind == "StepFailed":
        retry = f", retry at {event['retry_at_ms']}" if event.get("retry_at_ms") else ", no retry left"
        return f"step {event['step_index']} attempt {event['attempt']} failed: {event['error']['message']}{retry}"
    if kind == "RunStarted":
        return f"run of {event['workflow']!r} started with payload {json.dumps(event['payload'])}"
    if kind == "RunCompleted":
        return f"run completed → {json.dumps(event['output'])}"
    if kind == "RunFailed":
        return f"run failed: {event['error']['type']}: {event['error']['message']}"
    return kind


def _print_event(event: dict[str, Any]) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(event["at_ms"] / 1000))
    print(f"{event['seq']:>4}  {stamp}.{event['at_ms'] % 1000:03d}  {event['type']:<14} {_describe(event)}")


def _watch(run_id: str, timeout_s: float) -> None:
    seen = 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            events = _api_quiet("GET", f"/v1/runs/{run_id}/history?after_seq={seen}")
        except LookupError:
            events = []
        for event in events:
            _print_event(event)
            seen = event["seq"]
            if event["type"] in ("RunCompleted", "RunFailed"):
                return
        time.sleep(0.2)
    _fail(f"gave up watching {run_id} after {timeout_s:.0f} s; it may still be running", code=1)


def _api_quiet(method: str, path: str) -> list[dict[str, Any]]:
    import httpx

    base = os.environ.get("STEPSTREAM_API_URL", API_URL_DEFAULT)
    response = httpx.request(method, base + path, timeout=10)
    if response.status_code == 404:
        raise LookupError(path)
    response.raise_for_status()
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def cmd_runs(args: argparse.Namespace) -> None:
    if args.action == "list":
        query = {key: value for key, value in (("status", args.status), ("workflow", args.workflow)) if value}
        answer = _api("GET", "/v1/runs", params={**query, "limit": args.limit})
        for run in answer["runs"]:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run["created_at_ms"] / 1000))
            print(f"{run['run_id']}  {run['workflow']:<16} {run['status']:<10} {run['steps']:>3} steps  {stamp}")
    elif args.action == "get":
        print(json.dumps(_api("GET", f"/v1/runs/{args.run_id}"), indent=2))
    else:
        if args.follow:
            _watch(args.run_id, timeout_s=args.timeout)
        else:
            for event in _api("GET", f"/v1/runs/{args.run_id}/history")["events"]:
                _print_event(event)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="stepstream", description="A durable workflow engine on Apache Kafka.")
    commands = root.add_subparsers(dest="command", required=True)
    dev = commands.add_parser("dev", help="run the local stack (Kafka and all four services) in one process")
    dev.add_argument("--example", action="store_true", help="also start the example workflow app on port 8000")
    dev.set_defaults(handler=cmd_dev)
    for name in ("projector", "scheduler", "executor", "api"):
        commands.add_parser(name, help=f"run the {name} service alone").set_defaults(handler=cmd_service)
    kafka = commands.add_parser("kafka", help="the local single-node Apache Kafka")
    kafka.add_argument("action", choices=["start", "stop", "status"])
    kafka.set_defaults(handler=cmd_kafka)
    topics = commands.add_parser("topics", help="create the engine's topics")
    topics.add_argument("action", choices=["create"])
    topics.set_defaults(handler=cmd_topics)
    trigger = commands.add_parser("trigger", help="start a run through the api")
    trigger.add_argument("workflow")
    trigger.add_argument("--payload", help="the run's payload as JSON")
    trigger.add_argument("--url", help="the workflow endpoint, if the api has none registered for it")
    trigger.add_argument("--run-id", help="choose the run id (a second trigger with it starts nothing)")
    trigger.add_argument("--label")
    trigger.add_argument("--retries", type=int)
    trigger.add_argument("--delay-ms", type=int)
    trigger.add_argument("--watch", action="store_true", help="print the run's history as it happens")
    trigger.add_argument("--timeout", type=float, default=600, help="how long --watch waits (seconds)")
    trigger.set_defaults(handler=cmd_trigger)
    runs = commands.add_parser("runs", help="list runs, show one, or print its history")
    runs.add_argument("action", choices=["list", "get", "history"])
    runs.add_argument("run_id", nargs="?")
    runs.add_argument("--status")
    runs.add_argument("--workflow")
    runs.add_argument("--limit", type=int, default=20)
    runs.add_argument("--follow", action="store_true")
    runs.add_argument("--timeout", type=float, default=600)
    runs.set_defaults(handler=cmd_runs)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "runs" and args.action in ("get", "history") and not args.run_id:
        _fail(f"`stepstream runs {args.action}` needs a run id")
    args.handler(args)


if __name__ == "__main__":
    main()
