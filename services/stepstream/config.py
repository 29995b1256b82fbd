"""Settings: one typed object per service, read from environment variables once, at the entry point.

Every name carries the ``STEPSTREAM_`` prefix except ``KAFKA_BOOTSTRAP_SERVERS``, the name most Kafka
tooling already uses.

Each settings class is a frozen dataclass: its fields, their defaults and what they mean. Beside it, a
pydantic-settings model (``_KafkaVariables`` and so on) names the variables it reads, their types and
bounds. ``from_env`` reads that model from the mapping it is given, nothing else, and adds the checks
that involve more than one variable; variables with a syntax of their own (workflows, url hosts,
tokens, header keys) have their own functions below (docs/decisions/0016).
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from stepstream.core.urls import VARIABLE as ALLOWED_URL_HOSTS_VARIABLE
from stepstream.core.urls import AllowedHosts
from stepstream.errors import StepstreamError
from stepstream.sealing import SENSITIVE_HEADERS, Sealer, parse_keys
from stepstream.tokens import Token, parse_tokens


class ConfigurationError(StepstreamError):
    """A setting is missing or malformed; the message names the variable."""


def _comma_separated(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


# The kinds of variable, each None while unset so that the settings class's default stands. A variable
# set to nothing, as deployment templates leave them, counts as unset (an integer or a flag set to
# spaces too), except text typed plain ``str | None``: that is kept as given (an empty topic prefix
# is a prefix).
_Integer = Annotated[int | None, BeforeValidator(lambda raw: raw.strip() or None)]
_Flag = Annotated[bool | None, BeforeValidator(lambda raw: raw.strip() or None)]  # 1/0, on/off, true/false, yes/no
_Text = Annotated[str | None, BeforeValidator(lambda raw: raw or None)]
_List = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_separated)]  # comma-separated, not JSON


class _Variables(BaseSettings):
    """The environment variables behind one settings class: a field per variable, named by its alias."""

    # Names exactly as written (pydantic-settings would take them in any case); None, every field's
    # default, stands for unset and is not checked.
    model_config = SettingsConfigDict(case_sensitive=True, validate_default=False)

    @classmethod
    def read(cls, environ: Mapping[str, str]) -> dict[str, Any]:
        """The variables set in ``environ``, checked, by field name: keyword arguments for the settings class."""
        try:
            variables = cls(**_GivenEnvironment(cls, environ)())
        except ValidationError as error:
            raise ConfigurationError(_sentence(error.errors()[0], environ)) from None
        return variables.model_dump(exclude_none=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what read() passes, from the mapping it was given: not the process's environment (which
        # from_env reads only as its default mapping), a .env file or a secrets directory.
        return (init_settings,)


class _GivenEnvironment(EnvSettingsSource):
    """pydantic-settings' source of environment variables, over the mapping given to ``from_env``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self.environ = environ
        super().__init__(settings_cls)

    # Where EnvSettingsSource takes its variables from (os.environ); its .env-file subclass overrides it too.
    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self.environ


def _sentence(error: ErrorDetails, environ: Mapping[str, str]) -> str:
    """pydantic's complaint about one variable, in the words the settings have always used."""
    name = str(error["loc"][0])
    context = error.get("ctx", {})
    match error["type"]:
        case "int_parsing":
            return f"Expected {name} to be an integer, but got {environ[name]!r}"
        case "bool_parsing":
            return f"Expected {name} to be on or off (1 or 0), but got {environ[name]!r}"
        case "greater_than_equal":
            return f"Expected {name} to be at least {context['ge']}, but got {error['input']}"
        case "less_than_equal":
            return f"Expected {name} to be at most {context['le']}, but got {error['input']}"
        case "literal_error":
            choices = re.findall(r"'(.*?)'", context["expected"])  # pydantic quotes them: 'a', 'b' or 'c'
            wanted = " or ".join(choices) if len(choices) == 2 else f"one of {', '.join(choices)}"
            return f"Expected {name} to be {wanted}, but got {error['input']!r}"
        case _:  # a kind of variable without a sentence of its own yet; pydantic's says what it wanted
            return f"Expected {name} to be valid, but {error['msg'][0].lower()}{error['msg'][1:]}"


def default_home(environ: Mapping[str, str] = os.environ) -> Path:
    """Where the local stack keeps the broker's data and the query store."""
    return Path(environ.get("STEPSTREAM_HOME", ".stepstream")).resolve()


@dataclass(frozen=True, slots=True, kw_only=True)
class KafkaSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "stepstream."
    partitions: int = 12
    replication_factor: int = 1
    # How long the events topic keeps a record (its retention.ms when the topics are created): -1,
    # for ever. Runs' histories are read from it for audit, replay and rebuilding the query store.
    events_retention_ms: int = -1
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # The largest record value the engine writes. Kafka refuses records over its own limit (a broker's
    # message.max.bytes, a topic's max.message.bytes: about 1 MiB by default), and a refused record
    # in a transaction fails the whole batch, every time it is tried: so each service checks what it
    # is about to write against this bound first, and fails the one run (or dead-letters the one
    # input) that asked for too much. Set it below the smallest limit of the cluster's topics.
    max_record_bytes: int = 1_000_000
    # A partition whose input waits this long without progress makes its service not ready (/readyz).
    stall_ms: int = 30_000
    # Names this process's transactional producers and its static memberships of consumer groups. It
    # must be unique per process; kept across a restart (a pod's name, which a container restarted in
    # the pod keeps), it lets the restarted process fence its predecessor's open transaction and take
    # its partitions back at once. The default, host and pid, is unique, and stable in a container
    # (the service is its pid 1); on a bare host a restart gets a new one (docs/decisions/0004).
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # Join consumer groups as a static member named by the instance id (KIP-345).
    static_membership: bool = True
    # How long the group coordinator waits for a member's heartbeat before it gives its partitions to
    # others (brokers refuse less than group.min.session.timeout.ms, 6 s by default), and how often
    # members send one.
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    # How long a transaction may stay open before the broker aborts it: an open transaction of a
    # process that died holds back every read_committed reader of its partitions until then, unless
    # a process with the same transactional id (the same instance id) starts and fences it first.
    transaction_timeout_ms: int = 60_000
    # A schema registry speaking the Confluent API: every service registers the record schemas there
    # and reads records in its wire format; ``record_format="confluent"`` also writes them so, for
    # Kafka Connect, ksqlDB, Flink and Kafka UIs (docs/history.md). Both formats are always read.
    schema_registry_url: str | None = None
    record_format: str = "single-object"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> KafkaSettings:
        variables = _KafkaVariables.read(environ)
        settings = cls(**variables)
        if settings.record_format == "confluent" and settings.schema_registry_url is None:
            raise ConfigurationError(
                "Expected STEPSTREAM_SCHEMA_REGISTRY_URL to be set for STEPSTREAM_RECORD_FORMAT=confluent "
                "(the records name their schema by its id in that registry), but it is not"
            )
        if "heartbeat_interval_ms" not in variables:  # the default, or a third of a shorter session timeout
            heartbeat_interval_ms = min(settings.heartbeat_interval_ms, settings.session_timeout_ms // 3)
            settings = replace(settings, heartbeat_interval_ms=heartbeat_interval_ms)
        if not 0 < settings.heartbeat_interval_ms < settings.session_timeout_ms:
            raise ConfigurationError(
                "Expected STEPSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS to be above 0 and below the session timeout "
                f"({settings.session_timeout_ms} ms), but got {settings.heartbeat_interval_ms}"
            )
        return settings

    def client_options(self) -> dict[str, Any]:
        """Security settings passed through to every aiokafka client."""
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password
        if self.security_protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            options["ssl_context"] = context
        return options


_SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
_RecordFormat = Literal["single-object", "confluent"]


class _KafkaVariables(_Variables):
    bootstrap_servers: str | None = Field(None, alias="KAFKA_BOOTSTRAP_SERVERS")
    topic_prefix: str | None = Field(None, alias="STEPSTREAM_TOPIC_PREFIX")
    partitions: _Integer = Field(None, alias="STEPSTREAM_PARTITIONS", ge=1)
    replication_factor: _Integer = Field(None, alias="STEPSTREAM_REPLICATION_FACTOR", ge=1)
    events_retention_ms: _Integer = Field(None, alias="STEPSTREAM_EVENTS_RETENTION_MS", ge=-1)
    security_protocol: Annotated[_SecurityProtocol | None, BeforeValidator(str.upper)] = Field(
        None, alias="STEPSTREAM_KAFKA_SECURITY_PROTOCOL"
    )
    sasl_mechanism: _Text = Field(None, alias="STEPSTREAM_KAFKA_SASL_MECHANISM")
    sasl_username: _Text = Field(None, alias="STEPSTREAM_KAFKA_SASL_USERNAME")
    sasl_password: _Text = Field(None, alias="STEPSTREAM_KAFKA_SASL_PASSWORD")
    ssl_cafile: _Text = Field(None, alias="STEPSTREAM_KAFKA_SSL_CAFILE")
    ssl_certfile: _Text = Field(None, alias="STEPSTREAM_KAFKA_SSL_CERTFILE")
    ssl_keyfile: _Text = Field(None, alias="STEPSTREAM_KAFKA_SSL_KEYFILE")
    max_record_bytes: _Integer = Field(None, alias="STEPSTREAM_MAX_RECORD_BYTES", ge=65_536, le=100_000_000)
    stall_ms: _Integer = Field(None, alias="STEPSTREAM_STALL_MS", ge=1_000)
    instance_id: _Text = Field(None, alias="STEPSTREAM_INSTANCE_ID")
    static_membership: _Flag = Field(None, alias="STEPSTREAM_KAFKA_STATIC_MEMBERSHIP")
    # Brokers refuse less than their group.min.session.timeout.ms (6 s by default) anyway.
    session_timeout_ms: _Integer = Field(None, alias="STEPSTREAM_KAFKA_SESSION_TIMEOUT_MS", ge=1_000)
    heartbeat_interval_ms: _Integer = Field(None, alias="STEPSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS", ge=0)
    transaction_timeout_ms: _Integer = Field(None, alias="STEPSTREAM_KAFKA_TRANSACTION_TIMEOUT_MS", ge=1)
    schema_registry_url: _Text = Field(None, alias="STEPSTREAM_SCHEMA_REGISTRY_URL")
    record_format: Annotated[_RecordFormat | None, BeforeValidator(lambda raw: raw.strip().lower())] = Field(
        None, alias="STEPSTREAM_RECORD_FORMAT"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProjectorSettings:
    kafka: KafkaSettings
    default_retries: int = 3
    default_retry_base_ms: int = 1_000
    max_batch: int = 500
    database: str = ""  # the query store the indexer keeps; empty: <home>/stepstream.db
    notify_buffer_ms: int = 60_000  # how long a notification waits for runs that start waiting after it
    max_invoke_depth: int = 100  # how deep runs may invoke child runs
    call_grace_ms: int = 60_000  # past a call's timeout, how long to wait for the executor's report
    # Where the projector keeps every run on disk (projector/store.py); empty: a temporary file, so
    # every start reads the whole runs topic again. A folder that outlives a restart (a volume)
    # makes a restart read only what it missed.
    state_dir: str = ""
    cache_runs: int = 10_000  # how many runs stay in memory, the most recently used
    # How long an ended run's whole state (payload, results) is kept after it ended; then only a
    # compact state stays, enough to answer duplicates and late commands (core/retention.py).
    ended_run_retention_ms: int = 7 * 86_400_000

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ProjectorSettings:
        kafka = KafkaSettings.from_env(environ)
        return cls(kafka=kafka, database=database_url(environ), **_ProjectorVariables.read(environ))


class _ProjectorVariables(_Variables):
    default_retries: _Integer = Field(None, alias="STEPSTREAM_DEFAULT_RETRIES", ge=0)
    default_retry_base_ms: _Integer = Field(None, alias="STEPSTREAM_DEFAULT_RETRY_BASE_MS", ge=0)
    max_batch: _Integer = Field(None, alias="STEPSTREAM_PROJECTOR_MAX_BATCH", ge=1)
    notify_buffer_ms: _Integer = Field(None, alias="STEPSTREAM_NOTIFY_BUFFER_MS", ge=0)
    max_invoke_depth: _Integer = Field(None, alias="STEPSTREAM_MAX_INVOKE_DEPTH", ge=1)
    call_grace_ms: _Integer = Field(None, alias="STEPSTREAM_CALL_GRACE_MS", ge=1)
    state_dir: str | None = Field(None, alias="STEPSTREAM_STATE_DIR")
    cache_runs: _Integer = Field(None, alias="STEPSTREAM_PROJECTOR_CACHE_RUNS", ge=1)
    ended_run_retention_ms: _Integer = Field(None, alias="STEPSTREAM_ENDED_RUN_RETENTION_MS", ge=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulerSettings:
    kafka: KafkaSettings
    # How often, at most, the scheduler publishes the state of the flow-control keys that changed.
    flow_state_interval_ms: int = 1_000
    # How many of a flow-control key's queued requests stay in memory; the rest wait on disk.
    flow_queue_head: int = 256
    # Where the scheduler keeps its changelog's copy (scheduler/changelog.py); empty: a temporary file,
    # so every start reads the whole timers topic again.
    state_dir: str = ""
    # Flow-control keys always shown by name in the metrics (besides the ten with the longest queues).
    metrics_flow_keys: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> SchedulerSettings:
        return cls(kafka=KafkaSettings.from_env(environ), **_SchedulerVariables.read(environ))


class _SchedulerVariables(_Variables):
    flow_state_interval_ms: _Integer = Field(None, alias="STEPSTREAM_FLOW_STATE_INTERVAL_MS", ge=0)
    flow_queue_head: _Integer = Field(None, alias="STEPSTREAM_FLOW_QUEUE_HEAD", ge=1)
    state_dir: str | None = Field(None, alias="STEPSTREAM_STATE_DIR")
    metrics_flow_keys: _List = Field((), alias="STEPSTREAM_METRICS_FLOW_KEYS")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutorSettings:
    kafka: KafkaSettings
    signing_keys: tuple[str, ...]
    concurrency: int = 64
    timeout_ms: int = 30_000
    # 0: every step durable before the next runs (the hot path, executor/chain.py); more: the SDK runs
    # consecutive steps for that long in one request, each batch durable only as a whole.
    budget_ms: int = 0
    allow_unsigned: bool = False
    # Let the SDK keep a workflow running between the requests of a delivery the executor goes on with
    # (only the steps' acknowledgement travels; nothing is replayed). Off: every request replays.
    sessions: bool = True
    call_concurrency: int = 1_000  # engine-side calls (``ctx.call``) in flight, apart from deliveries
    # On SIGTERM, how long deliveries in flight may take to finish and report before they are handed
    # back (left uncommitted, so the next owner of their partition makes them again).
    shutdown_grace_ms: int = 20_000
    # The hosts deliveries may be signed and sent to. Nothing, unless given: from_env fills in the
    # default (the hosts of STEPSTREAM_WORKFLOWS), so a settings object built by hand fails closed.
    allowed_url_hosts: AllowedHosts = field(default_factory=AllowedHosts)
    # Also sign with the older v1 scheme (no url, no nonce), for endpoints on an older SDK while they
    # are upgraded; they stay open to replays until it is off again.
    sign_v1: bool = False
    # Seals the credential headers a step asks for before they reach Kafka, opens them to send them
    # (stepstream.sealing); without keys, such headers fail their run, said why.
    sealer: Sealer = field(default_factory=Sealer)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ExecutorSettings:
        variables = _ExecutorVariables.read(environ)
        # Only the "1" this message asks for, not a flag's other spellings.
        allow_unsigned = environ.get("STEPSTREAM_ALLOW_UNSIGNED", "") == "1"
        if not variables["signing_keys"] and not allow_unsigned:
            raise ConfigurationError(
                "Expected STEPSTREAM_SIGNING_KEYS (comma-separated; the first signs, all are sent during "
                "rotation), but it is not set. Set STEPSTREAM_ALLOW_UNSIGNED=1 only for local experiments."
            )
        return cls(
            kafka=KafkaSettings.from_env(environ),
            allow_unsigned=allow_unsigned,
            sealer=header_sealer(environ),
            allowed_url_hosts=allowed_url_hosts(environ),
            **variables,
        )


class _ExecutorVariables(_Variables):
    signing_keys: _List = Field((), alias="STEPSTREAM_SIGNING_KEYS")
    concurrency: _Integer = Field(None, alias="STEPSTREAM_EXECUTOR_CONCURRENCY", ge=1)
    timeout_ms: _Integer = Field(None, alias="STEPSTREAM_EXECUTOR_TIMEOUT_MS", ge=1)
    budget_ms: _Integer = Field(None, alias="STEPSTREAM_STEP_BUDGET_MS", ge=0)
    sessions: _Flag = Field(None, alias="STEPSTREAM_SESSIONS")
    call_concurrency: _Integer = Field(None, alias="STEPSTREAM_EXECUTOR_CALL_CONCURRENCY", ge=1)
    shutdown_grace_ms: _Integer = Field(None, alias="STEPSTREAM_SHUTDOWN_GRACE_MS", ge=0)
    sign_v1: _Flag = Field(None, alias="STEPSTREAM_SIGNATURE_V1")


def _workflows(environ: Mapping[str, str]) -> dict[str, str]:
    registry: dict[str, str] = {}
    for item in _comma_separated(environ.get("STEPSTREAM_WORKFLOWS", "")):
        name, sep, url = item.partition("=")
        if not sep or not name.strip() or not url.strip().startswith(("http://", "https://")):
            raise ConfigurationError(
                f"Expected STEPSTREAM_WORKFLOWS entries like name=http://host/path, but got {item!r}"
            )
        registry[name.strip()] = url.strip()
    return registry


def allowed_url_hosts(environ: Mapping[str, str] = os.environ) -> AllowedHosts:
    """The hosts deliveries may be signed for: STEPSTREAM_ALLOWED_URL_HOSTS (comma-separated host,
    host:port, *.suffix, or * for any), else the hosts of the workflows in STEPSTREAM_WORKFLOWS."""
    entries = _comma_separated(environ.get(ALLOWED_URL_HOSTS_VARIABLE, ""))
    if not entries:
        return AllowedHosts.of_urls(_workflows(environ).values())
    try:
        return AllowedHosts.parse(entries)
    except ValueError as error:
        raise ConfigurationError(str(error)) from None


def health_address(environ: Mapping[str, str] = os.environ) -> tuple[str, int] | None:
    """Where the projector, scheduler and executor serve /healthz and /readyz (the api serves them on
    its own port): STEPSTREAM_HEALTH_HOST (0.0.0.0, for the kubelet's probes) and STEPSTREAM_HEALTH_PORT
    (8081; ``off``: not served)."""
    if environ.get("STEPSTREAM_HEALTH_PORT", "").strip().lower() == "off":
        return None
    health = _HealthVariables.read(environ)
    return health.get("host", "0.0.0.0"), health.get("port", 8081)  # probes come from outside the pod


class _HealthVariables(_Variables):
    host: _Text = Field(None, alias="STEPSTREAM_HEALTH_HOST")
    port: _Integer = Field(None, alias="STEPSTREAM_HEALTH_PORT", ge=1, le=65_535)


def database_url(environ: Mapping[str, str]) -> str:
    return environ.get("STEPSTREAM_DATABASE") or str(default_home(environ) / "stepstream.db")


DEFAULT_MAX_PAYLOAD_BYTES = 524_288  # 512 KiB


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiSettings:
    kafka: KafkaSettings
    host: str = "127.0.0.1"
    port: int = 8080
    database: str = ""
    workflows: Mapping[str, str] = field(default_factory=dict)  # name -> endpoint url
    # A payload's (or a notification's data's) JSON text, as the engine records it. Half of what one
    # Kafka record may hold by default (about 1 MB, for the producer and the broker alike), so a
    # trigger with its other fields fits in one record; raising it means raising those limits too.
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    # The projector's notification buffer (STEPSTREAM_NOTIFY_BUFFER_MS, the same variable): the api
    # only tells a notifier how long its notification is kept for runs that start waiting later.
    notify_buffer_ms: int = 60_000
    # How long the query store keeps a run after it ended (its row, steps and history); 0: for ever.
    query_store_retention_ms: int = 0
    # The hosts a trigger's url and failure_url may name; None: the hosts of ``workflows``, as from_env
    # reads STEPSTREAM_ALLOWED_URL_HOSTS when it is unset.
    allowed_url_hosts: AllowedHosts | None = None
    # Who may call the api (stepstream.tokens); None: anyone who reaches it, which from_env allows only
    # when STEPSTREAM_API_AUTH=none says so.
    tokens: tuple[Token, ...] | None = None
    # Seals a trigger's credential headers before they reach Kafka; without keys, such a trigger is refused.
    sealer: Sealer = field(default_factory=Sealer)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ApiSettings:
        kafka = KafkaSettings.from_env(environ)
        variables = _ApiVariables.read(environ)
        # A payload is recorded whole in the run's first event, its state and each delivery: it must
        # leave room in a record of STEPSTREAM_MAX_RECORD_BYTES for the run's other fields (64 KiB at
        # most, as the api takes them), or every run it starts would fail.
        most = kafka.max_record_bytes - 65_536
        max_payload_bytes = variables.pop("max_payload_bytes", min(DEFAULT_MAX_PAYLOAD_BYTES, most))
        if max_payload_bytes > most:
            raise ConfigurationError(
                f"Expected STEPSTREAM_MAX_PAYLOAD_BYTES to be at most {most} (STEPSTREAM_MAX_RECORD_BYTES less "
                f"64 KiB), but got {max_payload_bytes}"
            )
        return cls(
            kafka=kafka,
            database=database_url(environ),
            workflows=_workflows(environ),
            max_payload_bytes=max_payload_bytes,
            allowed_url_hosts=allowed_url_hosts(environ),
            tokens=api_tokens(environ),
            sealer=header_sealer(environ),
            **variables,
        )

    @property
    def url_hosts(self) -> AllowedHosts:
        """The hosts a trigger's urls may name."""
        if self.allowed_url_hosts is None:
            return AllowedHosts.of_urls(self.workflows.values())
        return self.allowed_url_hosts


class _ApiVariables(_Variables):
    host: str | None = Field(None, alias="STEPSTREAM_API_HOST")
    port: _Integer = Field(None, alias="STEPSTREAM_API_PORT", ge=1, le=65_535)
    max_payload_bytes: _Integer = Field(None, alias="STEPSTREAM_MAX_PAYLOAD_BYTES", ge=1)  # its maximum: from_env
    notify_buffer_ms: _Integer = Field(None, alias="STEPSTREAM_NOTIFY_BUFFER_MS", ge=0)
    query_store_retention_ms: _Integer = Field(None, alias="STEPSTREAM_QUERY_STORE_RETENTION_MS", ge=0)


def api_tokens(environ: Mapping[str, str]) -> tuple[Token, ...] | None:
    """The api's tokens from ``STEPSTREAM_API_TOKENS`` and the file ``STEPSTREAM_API_TOKENS_FILE``;
    ``None`` only when ``STEPSTREAM_API_AUTH=none`` opens the api on purpose."""
    auth = environ.get("STEPSTREAM_API_AUTH", "tokens").strip().lower()
    if auth not in ("tokens", "none"):
        raise ConfigurationError(f"Expected STEPSTREAM_API_AUTH to be tokens or none, but got {auth!r}")
    sources = []
    if environ.get("STEPSTREAM_API_TOKENS", "").strip():
        sources.append((environ["STEPSTREAM_API_TOKENS"].replace(";", "\n"), "STEPSTREAM_API_TOKENS"))
    path = environ.get("STEPSTREAM_API_TOKENS_FILE", "").strip()
    if path:
        try:
            sources.append((Path(path).read_text(encoding="utf-8"), f"STEPSTREAM_API_TOKENS_FILE {path}"))
        except OSError as error:
            raise ConfigurationError(f"Expected STEPSTREAM_API_TOKENS_FILE to be readable, but {error}") from None
    if auth == "none":
        if sources:
            raise ConfigurationError("Expected either api tokens or STEPSTREAM_API_AUTH=none, but both are set")
        return None
    try:
        tokens = tuple(token for text, source in sources for token in parse_tokens(text, source))
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    names = [token.name for token in tokens]
    if len(set(names)) != len(names):
        again = sorted({name for name in names if names.count(name) > 1})
        raise ConfigurationError(f"Expected each token name once, but {', '.join(again)} is configured twice")
    if not tokens:
        raise ConfigurationError(
            "Expected api tokens in STEPSTREAM_API_TOKENS or STEPSTREAM_API_TOKENS_FILE (`stepstream token new NAME "
            "--roles read,write,operate` makes one and prints its line), or STEPSTREAM_API_AUTH=none to leave the "
            "api open to anyone who can reach it (a machine of your own only)"
        )
    return tokens


def header_sealer(environ: Mapping[str, str]) -> Sealer:
    """What seals credential headers: the keys of ``STEPSTREAM_HEADER_KEYS`` (the first seals, all open),
    for the headers named credentials by default and in ``STEPSTREAM_SENSITIVE_HEADERS``."""
    try:
        keys = parse_keys(environ.get("STEPSTREAM_HEADER_KEYS", ""))
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    more = {name.lower() for name in _comma_separated(environ.get("STEPSTREAM_SENSITIVE_HEADERS", ""))}
    return Sealer(keys, SENSITIVE_HEADERS | more)
