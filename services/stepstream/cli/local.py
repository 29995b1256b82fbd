"""Running the engine here: ``dev`` (the local stack in one process, with the example app and a
schema registry if asked), the single services, the local Kafka, the topics, and api tokens."""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stepstream import client

EXAMPLE_PORT = 8000
EXAMPLE_URL = f"http://127.0.0.1:{EXAMPLE_PORT}/workflows"  # where the example app serves its workflows


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

    from stepstream.config import ConfigurationError, default_home
    from stepstream.logs import configure_logging

    configure_logging()
    try:
        _run_dev(args, default_home())
    except ConfigurationError as error:  # a setting of the environment, said as the services say it
        client.fail(str(error))


def _run_dev(args: argparse.Namespace, home: Path) -> None:
    import asyncio

    from stepstream.config import ApiSettings, ExecutorSettings, KafkaSettings, ProjectorSettings, SchedulerSettings
    from stepstream.runner import ensure_topics_for, run_all

    print(f"stepstream dev: state in {home}", file=sys.stderr)
    # Whatever this command starts (the local Kafka, the example app, a registry) is stopped when it
    # ends, however it ends: Ctrl-C, a service that fails, or a step before the services that fails
    # (topics not created, a registry that does not start) — none is left running behind it.
    with contextlib.suppress(KeyboardInterrupt), contextlib.ExitStack() as started_here:
        bootstrap, started_kafka = _bootstrap_or_local(home, sasl_ssl=args.sasl_ssl)
        if started_kafka is not None:
            started_here.callback(_stop_kafka, started_kafka)
        api_token = _dev_credentials(home)
        if args.example:
            workflows = f"onboarding={EXAMPLE_URL}/onboarding,order={EXAMPLE_URL}/order"
            os.environ.setdefault("STEPSTREAM_WORKFLOWS", workflows)
            started_here.callback(_stop_process, _start_example(home))
        os.environ.setdefault("STEPSTREAM_ALLOWED_URL_HOSTS", _dev_allowed_url_hosts())
        # A stack that wrote records in the Confluent format needs its registry to read them again.
        registry = _start_registry(home) if args.schema_registry or (home / "registry" / "db").exists() else None
        if registry is not None:
            started_here.callback(registry.stop)
        asyncio.run(ensure_topics_for(KafkaSettings.from_env()))

        async def started() -> None:
            _print_banner(args, bootstrap, home, api_token, registry)

        asyncio.run(
            run_all(
                ProjectorSettings.from_env(),
                SchedulerSettings.from_env(),
                ExecutorSettings.from_env(),
                ApiSettings.from_env(),
                started=started,
            )
        )


def _dev_credentials(home: Path) -> str | None:
    """The local stack's signing key, header key and api token, made once in ``home`` and set for the
    services unless the environment has its own; the api token, if this made the api's tokens."""
    from stepstream.sealing import new_key
    from stepstream.tokens import ROLES, new_token, token_line

    os.environ.setdefault("STEPSTREAM_SIGNING_KEYS", _dev_secret(home, "signing.key", lambda: secrets.token_hex(32)))
    os.environ.setdefault("STEPSTREAM_HEADER_KEYS", _dev_secret(home, "header.key", new_key))
    configured = ("STEPSTREAM_API_TOKENS", "STEPSTREAM_API_TOKENS_FILE", "STEPSTREAM_API_AUTH")
    if any(os.environ.get(name) for name in configured):  # the api's own settings win
        return None
    api_token = _dev_secret(home, client.API_TOKEN_FILE, new_token)
    os.environ["STEPSTREAM_API_TOKENS"] = token_line("local", ROLES, api_token)
    return api_token


def _print_banner(args: argparse.Namespace, bootstrap: str, home: Path, api_token: str | None, registry: Any) -> None:
    """What a newcomer needs once the local stack is up: where it is, the token, what to try."""
    from stepstream.config import ApiSettings

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
            f"from there; the dashboard asks for it once; elsewhere: export STEPSTREAM_API_TOKEN=$(cat {token_file})",
        ]
    if registry is not None:
        lines.append(f"Records in the Confluent wire format, their schemas in the registry at {registry.url}")
    if args.example:
        lines += [
            f"The example workflows 'onboarding' and 'order' are served at {EXAMPLE_URL}",
            "In another terminal, trigger a run and watch its history:",
            '    .venv/bin/stepstream trigger onboarding --payload \'{"name": "Ada"}\' --watch',
            "Or an order, which waits for its payment until you notify it (from a third terminal):",
            '    .venv/bin/stepstream trigger order --payload \'{"order_id": "42"}\' --watch',
            "    .venv/bin/stepstream notify payment-42 --data '{\"amount\": 30}'",
        ]
    lines.append("Stop with Ctrl-C; runs survive a restart.\n")
    print("\n".join(lines), file=sys.stderr)


def _stop_kafka(kafka: Any) -> None:
    print("stepstream dev: stopping the local Kafka (its data stays in place)", file=sys.stderr)
    kafka.stop()


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=10)


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
    examples = Path(__file__).resolve().parents[3] / "examples"  # a checkout: beside services/
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


def add_commands(commands: Any) -> None:
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
