"""Settings, given an environment → then: what each service reads, and what it refuses to start with."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable, Mapping
from operator import attrgetter
from pathlib import Path
from types import SimpleNamespace

import pytest

from stepstream import config
from stepstream.config import (
    ApiSettings,
    ConfigurationError,
    ExecutorSettings,
    KafkaSettings,
    ProjectorSettings,
    SchedulerSettings,
    database_url,
    default_home,
    health_address,
)
from stepstream.errors import StepstreamError
from stepstream.tokens import ROLES, Token, new_token, token_line

UNSIGNED = {"STEPSTREAM_ALLOW_UNSIGNED": "1"}

Reader = Callable[[Mapping[str, str]], object]  # a settings class's from_env


def api_from_env(environ: dict[str, str]) -> ApiSettings:
    """The api's settings, its tokens aside (their own tests below): open, as STEPSTREAM_API_AUTH=none says."""
    return ApiSettings.from_env({"STEPSTREAM_API_AUTH": "none", **environ})


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep ``default_home()`` (the process environment by default) away from the developer's own."""
    monkeypatch.setenv("STEPSTREAM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# ---------------------------------------------------------------------------------------------
# Defaults


def test_kafka_defaults() -> None:
    settings = KafkaSettings.from_env({})

    assert (settings.bootstrap_servers, settings.topic_prefix) == ("127.0.0.1:9092", "stepstream.")
    assert (settings.partitions, settings.replication_factor) == (12, 1)
    assert settings.security_protocol == "PLAINTEXT"
    assert (settings.sasl_mechanism, settings.sasl_username, settings.sasl_password) == (None, None, None)
    assert (settings.ssl_cafile, settings.ssl_certfile, settings.ssl_keyfile) == (None, None, None)
    assert settings.instance_id == f"{socket.gethostname()}-{os.getpid()}"
    assert settings.static_membership
    assert (settings.session_timeout_ms, settings.heartbeat_interval_ms) == (10_000, 3_000)
    assert settings.transaction_timeout_ms == 60_000


def test_projector_defaults(home: Path) -> None:
    settings = ProjectorSettings.from_env({"STEPSTREAM_HOME": str(home)})

    assert (settings.default_retries, settings.default_retry_base_ms, settings.max_batch) == (3, 1_000, 500)
    assert settings.ended_run_retention_ms == 7 * 86_400_000
    assert settings.kafka.events_retention_ms == -1
    assert settings.database == str(home.resolve() / "stepstream.db")
    assert settings.kafka.topic_prefix == "stepstream."


def test_scheduler_reads_its_settings() -> None:
    settings = SchedulerSettings.from_env({"STEPSTREAM_TOPIC_PREFIX": "acme."})

    assert settings.kafka.topic_prefix == "acme."
    assert (settings.flow_state_interval_ms, settings.flow_queue_head) == (1_000, 256)
    assert SchedulerSettings.from_env({"STEPSTREAM_FLOW_QUEUE_HEAD": "2"}).flow_queue_head == 2
    with pytest.raises(ConfigurationError, match="STEPSTREAM_FLOW_QUEUE_HEAD"):
        SchedulerSettings.from_env({"STEPSTREAM_FLOW_QUEUE_HEAD": "0"})


def test_executor_defaults_when_unsigned_is_allowed() -> None:
    settings = ExecutorSettings.from_env(UNSIGNED)

    assert settings.signing_keys == ()
    assert settings.allow_unsigned is True
    assert (settings.concurrency, settings.timeout_ms, settings.budget_ms) == (64, 30_000, 0)


def test_api_defaults(home: Path) -> None:
    settings = api_from_env({"STEPSTREAM_HOME": str(home)})

    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.database == str(home.resolve() / "stepstream.db")
    assert dict(settings.workflows) == {}
    assert settings.max_payload_bytes == 524_288


# ---------------------------------------------------------------------------------------------
# Every variable is read


def test_kafka_reads_every_variable() -> None:
    settings = KafkaSettings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k1:9093,k2:9093",
            "STEPSTREAM_TOPIC_PREFIX": "acme.prod.",
            "STEPSTREAM_PARTITIONS": "48",
            "STEPSTREAM_REPLICATION_FACTOR": "3",
            "STEPSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "STEPSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "STEPSTREAM_KAFKA_SASL_USERNAME": "engine",
            "STEPSTREAM_KAFKA_SASL_PASSWORD": "s3cret",
            "STEPSTREAM_KAFKA_SSL_CAFILE": "/etc/ca.pem",
            "STEPSTREAM_KAFKA_SSL_CERTFILE": "/etc/cert.pem",
            "STEPSTREAM_KAFKA_SSL_KEYFILE": "/etc/key.pem",
            "STEPSTREAM_INSTANCE_ID": "scheduler-0",
            "STEPSTREAM_KAFKA_STATIC_MEMBERSHIP": "off",
            "STEPSTREAM_KAFKA_SESSION_TIMEOUT_MS": "45000",
            "STEPSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "5000",
            "STEPSTREAM_KAFKA_TRANSACTION_TIMEOUT_MS": "120000",
        }
    )

    assert settings == KafkaSettings(
        bootstrap_servers="k1:9093,k2:9093",
        topic_prefix="acme.prod.",
        partitions=48,
        replication_factor=3,
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="engine",
        sasl_password="s3cret",
        ssl_cafile="/etc/ca.pem",
        ssl_certfile="/etc/cert.pem",
        ssl_keyfile="/etc/key.pem",
        instance_id="scheduler-0",
        static_membership=False,
        session_timeout_ms=45_000,
        heartbeat_interval_ms=5_000,
        transaction_timeout_ms=120_000,
    )


@pytest.mark.parametrize(
    "name",
    [
        "STEPSTREAM_KAFKA_SASL_MECHANISM",
        "STEPSTREAM_KAFKA_SASL_USERNAME",
        "STEPSTREAM_KAFKA_SASL_PASSWORD",
        "STEPSTREAM_KAFKA_SSL_CAFILE",
        "STEPSTREAM_INSTANCE_ID",
        "STEPSTREAM_KAFKA_STATIC_MEMBERSHIP",
        "STEPSTREAM_KAFKA_SESSION_TIMEOUT_MS",
        "STEPSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS",
    ],
)
def test_an_empty_optional_kafka_variable_counts_as_unset(name: str) -> None:
    assert KafkaSettings.from_env({name: ""}) == KafkaSettings.from_env({})


@pytest.mark.parametrize(("raw", "static"), [("1", True), ("on", True), ("TRUE", True), ("0", False), ("off", False)])
def test_static_membership_is_on_or_off(raw: str, static: bool) -> None:
    assert KafkaSettings.from_env({"STEPSTREAM_KAFKA_STATIC_MEMBERSHIP": raw}).static_membership is static


def test_static_membership_refuses_anything_else_by_name() -> None:
    with pytest.raises(ConfigurationError, match=r"^Expected STEPSTREAM_KAFKA_STATIC_MEMBERSHIP to be on or off"):
        KafkaSettings.from_env({"STEPSTREAM_KAFKA_STATIC_MEMBERSHIP": "sometimes"})


def test_a_schema_registry_and_the_record_format_are_read_and_checked() -> None:
    url = "http://registry:8080/apis/ccompat/v7"
    settings = KafkaSettings.from_env({"STEPSTREAM_SCHEMA_REGISTRY_URL": url, "STEPSTREAM_RECORD_FORMAT": "Confluent"})

    assert (settings.schema_registry_url, settings.record_format) == (url, "confluent")
    assert (KafkaSettings.from_env({}).schema_registry_url, KafkaSettings.from_env({}).record_format) == (
        None,
        "single-object",
    )
    with pytest.raises(ConfigurationError, match=r"^Expected STEPSTREAM_RECORD_FORMAT to be single-object or conf"):
        KafkaSettings.from_env({"STEPSTREAM_RECORD_FORMAT": "json"})
    with pytest.raises(ConfigurationError, match=r"^Expected STEPSTREAM_SCHEMA_REGISTRY_URL to be set"):
        KafkaSettings.from_env({"STEPSTREAM_RECORD_FORMAT": "confluent"})


def test_a_shorter_session_timeout_shortens_the_default_heartbeat_to_a_third() -> None:
    settings = KafkaSettings.from_env({"STEPSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000"})

    assert (settings.session_timeout_ms, settings.heartbeat_interval_ms) == (6_000, 2_000)


def test_a_longer_session_timeout_keeps_the_default_heartbeat() -> None:
    settings = KafkaSettings.from_env({"STEPSTREAM_KAFKA_SESSION_TIMEOUT_MS": "45000"})

    assert settings.heartbeat_interval_ms == 3_000


@pytest.mark.parametrize("heartbeat", ["6000", "7000", "0"])
def test_a_heartbeat_not_below_the_session_timeout_is_refused_by_name(heartbeat: str) -> None:
    environ = {"STEPSTREAM_KAFKA_SESSION_TIMEOUT_MS": "6000", "STEPSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": heartbeat}

    with pytest.raises(ConfigurationError, match=r"^Expected STEPSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS to be above 0"):
        KafkaSettings.from_env(environ)


def test_projector_reads_every_variable() -> None:
    settings = ProjectorSettings.from_env(
        {
            "STEPSTREAM_DEFAULT_RETRIES": "0",
            "STEPSTREAM_DEFAULT_RETRY_BASE_MS": "250",
            "STEPSTREAM_PROJECTOR_MAX_BATCH": "1",
            "STEPSTREAM_ENDED_RUN_RETENTION_MS": "0",
            "STEPSTREAM_EVENTS_RETENTION_MS": "604800000",
            "STEPSTREAM_DATABASE": "/var/lib/stepstream/q.db",
            "STEPSTREAM_PARTITIONS": "6",
        }
    )

    assert (settings.default_retries, settings.default_retry_base_ms, settings.max_batch) == (0, 250, 1)
    assert settings.ended_run_retention_ms == 0
    assert settings.kafka.events_retention_ms == 604_800_000
    assert settings.database == "/var/lib/stepstream/q.db"
    assert settings.kafka.partitions == 6


def test_executor_reads_every_variable() -> None:
    settings = ExecutorSettings.from_env(
        {
            "STEPSTREAM_SIGNING_KEYS": " new-key , old-key ,",
            "STEPSTREAM_EXECUTOR_CONCURRENCY": "8",
            "STEPSTREAM_EXECUTOR_TIMEOUT_MS": "1500",
            "STEPSTREAM_STEP_BUDGET_MS": "0",
            "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        }
    )

    assert settings.signing_keys == ("new-key", "old-key")  # order kept: the first one signs
    assert (settings.concurrency, settings.timeout_ms, settings.budget_ms) == (8, 1_500, 0)
    assert settings.allow_unsigned is False
    assert settings.kafka.bootstrap_servers == "kafka:9092"


def test_api_reads_every_variable() -> None:
    settings = ApiSettings.from_env(
        {
            "STEPSTREAM_API_TOKENS": f"ops read,operate sha256:{'a' * 64}",
            "STEPSTREAM_API_HOST": "0.0.0.0",
            "STEPSTREAM_API_PORT": "9000",
            "STEPSTREAM_DATABASE": "/data/q.db",
            "STEPSTREAM_WORKFLOWS": "orders=http://app:8000/workflows/orders",
            "STEPSTREAM_MAX_PAYLOAD_BYTES": "2048",
        }
    )

    assert (settings.host, settings.port, settings.database) == ("0.0.0.0", 9000, "/data/q.db")
    assert dict(settings.workflows) == {"orders": "http://app:8000/workflows/orders"}
    assert settings.max_payload_bytes == 2_048
    assert settings.tokens == (Token("ops", frozenset({"read", "operate"}), bytes.fromhex("a" * 64)),)


def test_an_empty_integer_variable_takes_the_default() -> None:
    settings = ExecutorSettings.from_env({**UNSIGNED, "STEPSTREAM_EXECUTOR_CONCURRENCY": ""})

    assert settings.concurrency == 64


@pytest.mark.parametrize("raw", ["", "  "])
def test_an_empty_or_blank_integer_or_flag_takes_the_default(raw: str) -> None:
    settings = ExecutorSettings.from_env(
        {**UNSIGNED, "STEPSTREAM_EXECUTOR_CONCURRENCY": raw, "STEPSTREAM_SESSIONS": raw}
    )

    assert (settings.concurrency, settings.sessions) == (64, True)


def health_from_env(environ: Mapping[str, str]) -> SimpleNamespace:
    """``health_address``, its parts named as their variables name them."""
    host, port = health_address(environ) or (None, None)
    return SimpleNamespace(host=host, port=port)


# Each variable, a value other than its default, and the setting it lands in. The names are the contract
# with every deployment; since pydantic-settings reads them into keyword arguments, mypy no longer sees
# a variable read into the wrong setting, or into none: this table does.
VARIABLES: list[tuple[Callable[[dict[str, str]], object], dict[str, str], str, object]] = [
    (KafkaSettings.from_env, {"KAFKA_BOOTSTRAP_SERVERS": "k1:9093,k2:9093"}, "bootstrap_servers", "k1:9093,k2:9093"),
    (KafkaSettings.from_env, {"STEPSTREAM_TOPIC_PREFIX": ""}, "topic_prefix", ""),  # empty is a prefix too
    (KafkaSettings.from_env, {"STEPSTREAM_PARTITIONS": "48"}, "partitions", 48),
    (KafkaSettings.from_env, {"STEPSTREAM_REPLICATION_FACTOR": "3"}, "replication_factor", 3),
    (KafkaSettings.from_env, {"STEPSTREAM_EVENTS_RETENTION_MS": "604800000"}, "events_retention_ms", 604_800_000),
    (KafkaSettings.from_env, {"STEPSTREAM_KAFKA_SECURITY_PROTOCOL": "sasl_ssl"}, "security_protocol", "SASL_SSL"),
    (KafkaSettings.from_env, {"STEPSTREAM_KAFKA_SASL_MECHANISM": "PLAIN"}, "sasl_mechanism", "PLAIN"),
    (KafkaSettings.from_env, {"STEPSTREAM_KAFKA_SASL_USERNAME": "engine"}, "sasl_username", "engine"),
    (KafkaSettings.from_env, {"STEPSTREAM_KAFKA_SASL_PASSWORD": "s3cret"}, "sasl_password", "s3cret"),
    (KafkaSettings.from_env, {"STEPSTREAM_KAFKA_SSL_CAFILE": "/etc/ca.pem"}, "ssl_cafile", "/etc/ca.pem"),
    (KafkaSettings.from_env, {"STEPSTREAM_KAFKA_SSL_CERTFILE": "/etc/cert.pem"}, "ssl_certfile", "/etc/cert.pem"),
    (KafkaSettings.from_env, {"STEPSTREAM_KAFKA_SSL_KEYFILE": "/etc/key.pem"}, "ssl_keyfile", "/etc/key.pem"),
    (KafkaSettings.from_env, {"STEPSTREAM_MAX_RECORD_BYTES": "300000"}, "max_record_bytes", 300_000),
    (KafkaSettings.from_env, {"STEPSTREAM_STALL_MS": "5000"}, "stall_ms", 5_000),
    (KafkaSettings.from_env, {"STEPSTREAM_INSTANCE_ID": "scheduler-0"}, "instance_id", "scheduler-0"),
    (KafkaSettings.from_env, {"STEPSTREAM_KAFKA_STATIC_MEMBERSHIP": " No "}, "static_membership", False),
    (KafkaSettings.from_env, {"STEPSTREAM_KAFKA_SESSION_TIMEOUT_MS": "45000"}, "session_timeout_ms", 45_000),
    (KafkaSettings.from_env, {"STEPSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "5000"}, "heartbeat_interval_ms", 5_000),
    (KafkaSettings.from_env, {"STEPSTREAM_KAFKA_TRANSACTION_TIMEOUT_MS": "9"}, "transaction_timeout_ms", 9),
    (
        KafkaSettings.from_env,
        {"STEPSTREAM_SCHEMA_REGISTRY_URL": "http://r:8081"},
        "schema_registry_url",
        "http://r:8081",
    ),
    (
        KafkaSettings.from_env,
        {"STEPSTREAM_RECORD_FORMAT": " Confluent ", "STEPSTREAM_SCHEMA_REGISTRY_URL": "http://r:8081"},
        "record_format",
        "confluent",
    ),
    (ProjectorSettings.from_env, {"STEPSTREAM_DEFAULT_RETRIES": "0"}, "default_retries", 0),
    (ProjectorSettings.from_env, {"STEPSTREAM_DEFAULT_RETRY_BASE_MS": "250"}, "default_retry_base_ms", 250),
    (ProjectorSettings.from_env, {"STEPSTREAM_PROJECTOR_MAX_BATCH": "7"}, "max_batch", 7),
    (ProjectorSettings.from_env, {"STEPSTREAM_DATABASE": "/srv/q.db"}, "database", "/srv/q.db"),
    (ProjectorSettings.from_env, {"STEPSTREAM_NOTIFY_BUFFER_MS": "5000"}, "notify_buffer_ms", 5_000),
    (ProjectorSettings.from_env, {"STEPSTREAM_MAX_INVOKE_DEPTH": "3"}, "max_invoke_depth", 3),
    (ProjectorSettings.from_env, {"STEPSTREAM_CALL_GRACE_MS": "1000"}, "call_grace_ms", 1_000),
    (ProjectorSettings.from_env, {"STEPSTREAM_STATE_DIR": "/var/lib/p"}, "state_dir", "/var/lib/p"),
    (ProjectorSettings.from_env, {"STEPSTREAM_PROJECTOR_CACHE_RUNS": "50"}, "cache_runs", 50),
    (ProjectorSettings.from_env, {"STEPSTREAM_ENDED_RUN_RETENTION_MS": "0"}, "ended_run_retention_ms", 0),
    (SchedulerSettings.from_env, {"STEPSTREAM_FLOW_STATE_INTERVAL_MS": "250"}, "flow_state_interval_ms", 250),
    (SchedulerSettings.from_env, {"STEPSTREAM_FLOW_QUEUE_HEAD": "2"}, "flow_queue_head", 2),
    (SchedulerSettings.from_env, {"STEPSTREAM_STATE_DIR": "/var/lib/s"}, "state_dir", "/var/lib/s"),
    (SchedulerSettings.from_env, {"STEPSTREAM_METRICS_FLOW_KEYS": " a , b ,"}, "metrics_flow_keys", ("a", "b")),
    (ExecutorSettings.from_env, {"STEPSTREAM_SIGNING_KEYS": " k1 , k2 ,"}, "signing_keys", ("k1", "k2")),
    (ExecutorSettings.from_env, {"STEPSTREAM_EXECUTOR_CONCURRENCY": "8"}, "concurrency", 8),
    (ExecutorSettings.from_env, {"STEPSTREAM_EXECUTOR_TIMEOUT_MS": "1500"}, "timeout_ms", 1_500),
    (ExecutorSettings.from_env, {"STEPSTREAM_STEP_BUDGET_MS": "250"}, "budget_ms", 250),
    (ExecutorSettings.from_env, {"STEPSTREAM_SESSIONS": "off"}, "sessions", False),
    (ExecutorSettings.from_env, {"STEPSTREAM_EXECUTOR_CALL_CONCURRENCY": "10"}, "call_concurrency", 10),
    (ExecutorSettings.from_env, {"STEPSTREAM_SHUTDOWN_GRACE_MS": "0"}, "shutdown_grace_ms", 0),
    (ExecutorSettings.from_env, {"STEPSTREAM_SIGNATURE_V1": "yes"}, "sign_v1", True),
    (api_from_env, {"STEPSTREAM_API_HOST": "0.0.0.0"}, "host", "0.0.0.0"),
    (api_from_env, {"STEPSTREAM_API_PORT": "9000"}, "port", 9_000),
    (api_from_env, {"STEPSTREAM_MAX_PAYLOAD_BYTES": "2048"}, "max_payload_bytes", 2_048),
    (api_from_env, {"STEPSTREAM_NOTIFY_BUFFER_MS": "5000"}, "notify_buffer_ms", 5_000),
    (api_from_env, {"STEPSTREAM_QUERY_STORE_RETENTION_MS": "86400000"}, "query_store_retention_ms", 86_400_000),
    (health_from_env, {"STEPSTREAM_HEALTH_HOST": "127.0.0.1"}, "host", "127.0.0.1"),
    (health_from_env, {"STEPSTREAM_HEALTH_PORT": "9100"}, "port", 9_100),
]


@pytest.mark.parametrize(("read", "environ", "setting", "value"), VARIABLES, ids=[str(row[1]) for row in VARIABLES])
def test_each_variable_is_read_into_its_setting(
    read: Reader, environ: dict[str, str], setting: str, value: object
) -> None:
    settings = read({**UNSIGNED, **environ})

    assert attrgetter(setting)(settings) == value
    assert attrgetter(setting)(read(UNSIGNED)) != value  # not the default by chance


def test_the_table_names_every_variable_the_settings_read_through_pydantic_settings() -> None:
    read_by_models = {
        field.alias for model in config._Variables.__subclasses__() for field in model.model_fields.values()
    }

    assert read_by_models <= {name for _, environ, _, _ in VARIABLES for name in environ}


# ---------------------------------------------------------------------------------------------
# Malformed and out-of-range values


INTEGERS = [
    (KafkaSettings.from_env, "STEPSTREAM_PARTITIONS"),
    (KafkaSettings.from_env, "STEPSTREAM_REPLICATION_FACTOR"),
    (KafkaSettings.from_env, "STEPSTREAM_KAFKA_SESSION_TIMEOUT_MS"),
    (KafkaSettings.from_env, "STEPSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS"),
    (KafkaSettings.from_env, "STEPSTREAM_KAFKA_TRANSACTION_TIMEOUT_MS"),
    (ProjectorSettings.from_env, "STEPSTREAM_DEFAULT_RETRIES"),
    (ProjectorSettings.from_env, "STEPSTREAM_DEFAULT_RETRY_BASE_MS"),
    (ProjectorSettings.from_env, "STEPSTREAM_PROJECTOR_MAX_BATCH"),
    (ProjectorSettings.from_env, "STEPSTREAM_ENDED_RUN_RETENTION_MS"),
    (api_from_env, "STEPSTREAM_QUERY_STORE_RETENTION_MS"),
    (ExecutorSettings.from_env, "STEPSTREAM_EXECUTOR_CONCURRENCY"),
    (ExecutorSettings.from_env, "STEPSTREAM_EXECUTOR_TIMEOUT_MS"),
    (ExecutorSettings.from_env, "STEPSTREAM_STEP_BUDGET_MS"),
    (api_from_env, "STEPSTREAM_API_PORT"),
    (api_from_env, "STEPSTREAM_MAX_PAYLOAD_BYTES"),
]


@pytest.mark.parametrize(("read", "name"), INTEGERS, ids=[name for _, name in INTEGERS])
@pytest.mark.parametrize("raw", ["twelve", "1.5", "0x10", "12ms"])
def test_a_variable_that_is_not_an_integer_is_refused_by_name(read: Reader, name: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^Expected {name} to be an integer, but got '{raw}'$"):
        read({**UNSIGNED, name: raw})


@pytest.mark.parametrize(
    ("read", "name", "minimum"),
    [
        (KafkaSettings.from_env, "STEPSTREAM_PARTITIONS", 1),
        (KafkaSettings.from_env, "STEPSTREAM_REPLICATION_FACTOR", 1),
        (KafkaSettings.from_env, "STEPSTREAM_KAFKA_SESSION_TIMEOUT_MS", 1_000),
        (KafkaSettings.from_env, "STEPSTREAM_KAFKA_TRANSACTION_TIMEOUT_MS", 1),
        (ProjectorSettings.from_env, "STEPSTREAM_DEFAULT_RETRIES", 0),
        (ProjectorSettings.from_env, "STEPSTREAM_DEFAULT_RETRY_BASE_MS", 0),
        (ProjectorSettings.from_env, "STEPSTREAM_PROJECTOR_MAX_BATCH", 1),
        (ExecutorSettings.from_env, "STEPSTREAM_EXECUTOR_CONCURRENCY", 1),
        (ExecutorSettings.from_env, "STEPSTREAM_EXECUTOR_TIMEOUT_MS", 1),
        (ExecutorSettings.from_env, "STEPSTREAM_STEP_BUDGET_MS", 0),
        (api_from_env, "STEPSTREAM_API_PORT", 1),
        (api_from_env, "STEPSTREAM_MAX_PAYLOAD_BYTES", 1),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_a_variable_below_its_minimum_is_refused_by_name_and_the_minimum_itself_is_fine(
    read: Reader, name: str, minimum: int
) -> None:
    with pytest.raises(ConfigurationError, match=rf"^Expected {name} to be at least {minimum}, but got {minimum - 1}$"):
        read({**UNSIGNED, name: str(minimum - 1)})
    with pytest.raises(ConfigurationError, match=name):
        read({**UNSIGNED, name: "-100"})
    read({**UNSIGNED, name: str(minimum)})  # no error


@pytest.mark.parametrize("port", ["65536", "100000"])
def test_an_api_port_above_65535_is_refused_by_name(port: str) -> None:
    with pytest.raises(ConfigurationError, match="STEPSTREAM_API_PORT"):
        api_from_env({"STEPSTREAM_API_PORT": port})


def test_the_highest_api_port_is_fine() -> None:
    assert api_from_env({"STEPSTREAM_API_PORT": "65535"}).port == 65_535


def test_configuration_errors_share_the_root() -> None:
    assert issubclass(ConfigurationError, StepstreamError)


@pytest.mark.parametrize(
    ("read", "environ", "sentence"),
    [
        (
            KafkaSettings.from_env,
            {"STEPSTREAM_PARTITIONS": "twelve"},
            "Expected STEPSTREAM_PARTITIONS to be an integer, but got 'twelve'",
        ),
        (
            KafkaSettings.from_env,
            {"STEPSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS": "-1"},
            "Expected STEPSTREAM_KAFKA_HEARTBEAT_INTERVAL_MS to be at least 0, but got -1",
        ),
        (
            KafkaSettings.from_env,
            {"STEPSTREAM_MAX_RECORD_BYTES": "100000001"},
            "Expected STEPSTREAM_MAX_RECORD_BYTES to be at most 100000000, but got 100000001",
        ),
        (
            health_address,
            {"STEPSTREAM_HEALTH_PORT": "65536"},
            "Expected STEPSTREAM_HEALTH_PORT to be at most 65535, but got 65536",
        ),
        (
            ExecutorSettings.from_env,
            {"STEPSTREAM_SESSIONS": " maybe "},
            "Expected STEPSTREAM_SESSIONS to be on or off (1 or 0), but got ' maybe '",
        ),
        (
            KafkaSettings.from_env,
            {"STEPSTREAM_KAFKA_SECURITY_PROTOCOL": "tls"},
            "Expected STEPSTREAM_KAFKA_SECURITY_PROTOCOL to be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, "
            "but got 'TLS'",
        ),
        (
            KafkaSettings.from_env,
            {"STEPSTREAM_RECORD_FORMAT": " JSON "},
            "Expected STEPSTREAM_RECORD_FORMAT to be single-object or confluent, but got 'json'",
        ),
    ],
    ids=["integer", "at-least", "at-most", "health-port", "flag", "one-of", "either-or"],
)
def test_a_bad_value_of_each_kind_is_refused_in_the_same_sentence_as_ever(
    read: Reader, environ: dict[str, str], sentence: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        read({**UNSIGNED, **environ})

    assert str(raised.value) == sentence


HOSTILE = ["", " ", "twelve", "-1", "1e3", "0x10", "{}", "[1, 2]", "null", "\x00", "é", "9" * 40, ",", "="]


@pytest.mark.parametrize(("read", "environ"), [row[:2] for row in VARIABLES], ids=[str(row[1]) for row in VARIABLES])
def test_any_value_of_any_variable_is_taken_or_refused_naming_the_variable(
    read: Reader, environ: dict[str, str]
) -> None:
    name = next(iter(environ))
    unnamed = []
    for raw in HOSTILE:
        try:
            read({**UNSIGNED, **environ, name: raw})
        except ConfigurationError as error:  # anything else (pydantic's ValidationError) fails the test
            if name not in str(error):
                unnamed.append((raw, str(error)))
    assert unnamed == []


def test_the_settings_read_only_the_mapping_they_are_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPSTREAM_PARTITIONS", "7")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("STEPSTREAM_TOPIC_PREFIX=dotenv.\n")

    settings = KafkaSettings.from_env({"stepstream_replication_factor": "3"})  # names are case-sensitive

    assert (settings.partitions, settings.topic_prefix, settings.replication_factor) == (12, "stepstream.", 1)
    assert KafkaSettings.from_env().partitions == 7  # the process's environment, when none is given


# ---------------------------------------------------------------------------------------------
# STEPSTREAM_WORKFLOWS


def test_workflows_are_parsed_name_by_name_with_spaces_trimmed() -> None:
    settings = api_from_env(
        {"STEPSTREAM_WORKFLOWS": " orders = http://app:8000/workflows/orders ,refunds=https://pay.example/wf/refunds,,"}
    )

    assert dict(settings.workflows) == {
        "orders": "http://app:8000/workflows/orders",
        "refunds": "https://pay.example/wf/refunds",
    }


def test_a_workflow_url_may_contain_an_equals_sign() -> None:
    settings = api_from_env({"STEPSTREAM_WORKFLOWS": "orders=http://app/wf?tenant=acme"})

    assert dict(settings.workflows) == {"orders": "http://app/wf?tenant=acme"}


@pytest.mark.parametrize(
    "entry",
    ["orders", "=http://app/wf", " =http://app/wf", "orders=", "orders=app:8000/wf", "orders=ftp://app/wf"],
    ids=["no-equals", "no-name", "blank-name", "no-url", "no-scheme", "other-scheme"],
)
def test_a_malformed_workflow_entry_is_refused_by_name(entry: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^Expected STEPSTREAM_WORKFLOWS entries like name=http") as raised:
        api_from_env({"STEPSTREAM_WORKFLOWS": f"good=http://app/good,{entry}"})

    assert repr(entry.strip()) in str(raised.value)


# ---------------------------------------------------------------------------------------------
# Signing keys


@pytest.mark.parametrize(
    "environ",
    [{}, {"STEPSTREAM_SIGNING_KEYS": ""}, {"STEPSTREAM_SIGNING_KEYS": " , ,"}, {"STEPSTREAM_ALLOW_UNSIGNED": "true"}],
    ids=["unset", "empty", "only-commas", "allow-unsigned-not-1"],
)
def test_the_executor_refuses_to_start_without_signing_keys(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="STEPSTREAM_SIGNING_KEYS") as raised:
        ExecutorSettings.from_env(environ)

    assert "STEPSTREAM_ALLOW_UNSIGNED=1" in str(raised.value)


def test_allow_unsigned_with_keys_still_signs() -> None:
    settings = ExecutorSettings.from_env({**UNSIGNED, "STEPSTREAM_SIGNING_KEYS": "k1"})

    assert settings.signing_keys == ("k1",)


# ---------------------------------------------------------------------------------------------
# Kafka security


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL", "sasl_ssl", "Ssl"])
def test_each_security_protocol_is_accepted_in_any_case(protocol: str) -> None:
    settings = KafkaSettings.from_env({"STEPSTREAM_KAFKA_SECURITY_PROTOCOL": protocol})

    assert settings.security_protocol == protocol.upper()


@pytest.mark.parametrize("protocol", ["TLS", "SASL", "PLAIN TEXT", ""])
def test_an_unknown_security_protocol_is_refused_by_name(protocol: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^Expected STEPSTREAM_KAFKA_SECURITY_PROTOCOL to be one of"):
        KafkaSettings.from_env({"STEPSTREAM_KAFKA_SECURITY_PROTOCOL": protocol})


def test_every_service_refuses_an_unknown_security_protocol() -> None:
    environ = {**UNSIGNED, "STEPSTREAM_KAFKA_SECURITY_PROTOCOL": "TLS"}
    for read in (
        ProjectorSettings.from_env,
        SchedulerSettings.from_env,
        ExecutorSettings.from_env,
        api_from_env,
    ):
        with pytest.raises(ConfigurationError, match="STEPSTREAM_KAFKA_SECURITY_PROTOCOL"):
            read(environ)


def test_plaintext_client_options_carry_no_credentials_and_no_tls() -> None:
    assert KafkaSettings.from_env({}).client_options() == {"security_protocol": "PLAINTEXT"}


def test_client_options_carry_the_sasl_settings_when_a_mechanism_is_set() -> None:
    settings = KafkaSettings.from_env(
        {
            "STEPSTREAM_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "STEPSTREAM_KAFKA_SASL_MECHANISM": "PLAIN",
            "STEPSTREAM_KAFKA_SASL_USERNAME": "engine",
            "STEPSTREAM_KAFKA_SASL_PASSWORD": "s3cret",
        }
    )

    assert settings.client_options() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "engine",
        "sasl_plain_password": "s3cret",
    }


def test_client_options_carry_no_sasl_settings_without_a_mechanism() -> None:
    settings = KafkaSettings.from_env(
        {"STEPSTREAM_KAFKA_SASL_USERNAME": "engine", "STEPSTREAM_KAFKA_SASL_PASSWORD": "s3cret"}
    )

    assert not any(key.startswith("sasl") for key in settings.client_options())


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_tls_protocols_get_a_verifying_ssl_context(protocol: str) -> None:
    settings = KafkaSettings.from_env(
        {
            "STEPSTREAM_KAFKA_SECURITY_PROTOCOL": protocol,
            "STEPSTREAM_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "STEPSTREAM_KAFKA_SASL_USERNAME": "engine",
            "STEPSTREAM_KAFKA_SASL_PASSWORD": "s3cret",
        }
    )

    options = settings.client_options()

    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"


def test_a_missing_ca_file_fails_when_the_options_are_built() -> None:
    settings = KafkaSettings.from_env(
        {"STEPSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL", "STEPSTREAM_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}
    )

    with pytest.raises(FileNotFoundError):
        settings.client_options()


# ---------------------------------------------------------------------------------------------
# The query store's location


def test_stepstream_database_wins_over_the_home_directory(home: Path) -> None:
    assert database_url({"STEPSTREAM_DATABASE": "/srv/q.db"}) == "/srv/q.db"
    assert database_url({"STEPSTREAM_DATABASE": "", "STEPSTREAM_HOME": str(home)}) == str(
        home.resolve() / "stepstream.db"
    )


def test_default_home_follows_stepstream_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPSTREAM_HOME", str(tmp_path / "elsewhere"))

    assert default_home() == (tmp_path / "elsewhere").resolve()
    # the settings read the environment they are given, not the process's
    settings = ProjectorSettings.from_env({"STEPSTREAM_HOME": str(tmp_path / "given")})
    assert settings.database == str((tmp_path / "given").resolve() / "stepstream.db")


def test_default_home_is_dot_stepstream_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STEPSTREAM_HOME")
    monkeypatch.chdir(tmp_path)

    assert default_home() == (tmp_path / ".stepstream").resolve()
    assert default_home().is_absolute()


# ---------------------------------------------------------------------------------------------
# Where deliveries may go


@pytest.mark.parametrize("read", [api_from_env, ExecutorSettings.from_env], ids=["api", "executor"])
def test_the_allowed_url_hosts_default_to_the_hosts_of_the_registered_workflows(read: Reader) -> None:
    settings = read(
        {
            **UNSIGNED,
            "STEPSTREAM_WORKFLOWS": "orders=http://shop.apps:8000/workflows/orders,mail=https://Mail.Apps/w/mail",
        }
    )

    hosts = settings.allowed_url_hosts  # type: ignore[attr-defined]
    assert str(hosts) == "shop.apps,mail.apps"
    assert hosts.url_problem("http://shop.apps:9999/other") is None


@pytest.mark.parametrize("read", [api_from_env, ExecutorSettings.from_env], ids=["api", "executor"])
def test_the_allowed_url_hosts_variable_replaces_the_default(read: Reader) -> None:
    settings = read(
        {
            **UNSIGNED,
            "STEPSTREAM_WORKFLOWS": "orders=http://shop.apps:8000/workflows/orders",
            "STEPSTREAM_ALLOWED_URL_HOSTS": " *.apps.example.com , 127.0.0.1:8000 ",
        }
    )

    hosts = settings.allowed_url_hosts  # type: ignore[attr-defined]
    assert str(hosts) == "*.apps.example.com,127.0.0.1:8000"
    assert hosts.url_problem("http://shop.apps:8000/workflows/orders") is not None


def test_only_an_explicit_star_allows_any_host() -> None:
    assert ExecutorSettings.from_env({**UNSIGNED, "STEPSTREAM_ALLOWED_URL_HOSTS": "*"}).allowed_url_hosts.any_host
    assert not ExecutorSettings.from_env(UNSIGNED).allowed_url_hosts  # nothing registered: nothing allowed


@pytest.mark.parametrize("read", [api_from_env, ExecutorSettings.from_env], ids=["api", "executor"])
def test_a_malformed_allowed_url_host_is_refused_by_name(read: Reader) -> None:
    with pytest.raises(ConfigurationError, match="Expected STEPSTREAM_ALLOWED_URL_HOSTS entries like"):
        read({**UNSIGNED, "STEPSTREAM_ALLOWED_URL_HOSTS": "https://app.example.com"})


def test_api_settings_built_by_hand_allow_the_hosts_of_their_workflows() -> None:
    settings = ApiSettings(kafka=KafkaSettings(), workflows={"orders": "http://shop.apps:8000/w/orders"})

    assert str(settings.url_hosts) == "shop.apps"


def test_executor_settings_built_by_hand_allow_nothing_until_told() -> None:
    assert not ExecutorSettings(kafka=KafkaSettings(), signing_keys=("k",)).allowed_url_hosts


@pytest.mark.parametrize(("raw", "on"), [("", False), ("0", False), ("1", True)])
def test_signing_with_v1_too_is_off_unless_asked(raw: str, on: bool) -> None:
    assert ExecutorSettings.from_env({**UNSIGNED, "STEPSTREAM_SIGNATURE_V1": raw}).sign_v1 is on


def test_a_signature_v1_flag_that_is_not_on_or_off_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="Expected STEPSTREAM_SIGNATURE_V1 to be on or off"):
        ExecutorSettings.from_env({**UNSIGNED, "STEPSTREAM_SIGNATURE_V1": "maybe"})


def test_the_payload_limit_leaves_room_in_a_record_for_the_runs_other_fields() -> None:
    # by default 512 KiB; lowered with the record limit, so an accepted payload can always be recorded
    assert api_from_env({}).max_payload_bytes == 524_288
    assert api_from_env({"STEPSTREAM_MAX_RECORD_BYTES": "200000"}).max_payload_bytes == 200_000 - 65_536
    with pytest.raises(ConfigurationError) as raised:
        api_from_env({"STEPSTREAM_MAX_RECORD_BYTES": "200000", "STEPSTREAM_MAX_PAYLOAD_BYTES": "200000"})
    assert str(raised.value) == (
        "Expected STEPSTREAM_MAX_PAYLOAD_BYTES to be at most 134464 (STEPSTREAM_MAX_RECORD_BYTES less 64 KiB), "
        "but got 200000"
    )


def test_the_record_limit_and_the_stall_bound_are_read_once_for_every_service() -> None:
    settings = KafkaSettings.from_env({"STEPSTREAM_MAX_RECORD_BYTES": "300000", "STEPSTREAM_STALL_MS": "5000"})
    assert (settings.max_record_bytes, settings.stall_ms) == (300_000, 5_000)
    assert (KafkaSettings().max_record_bytes, KafkaSettings().stall_ms) == (1_000_000, 30_000)
    with pytest.raises(ConfigurationError, match="Expected STEPSTREAM_MAX_RECORD_BYTES to be at least 65536"):
        KafkaSettings.from_env({"STEPSTREAM_MAX_RECORD_BYTES": "1000"})


# ---------------------------------------------------------------------------------------------
# The api's tokens


def test_the_api_wants_tokens_unless_told_to_run_open(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigurationError, match=r"^Expected api tokens in STEPSTREAM_API_TOKENS .*STEPSTREAM_API_AUTH=none"
    ):
        ApiSettings.from_env({})
    assert ApiSettings.from_env({"STEPSTREAM_API_AUTH": "none"}).tokens is None

    token = new_token()
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"# who may call\n{token_line('deploy-bot', ['write'], token)}\n\n")
    settings = ApiSettings.from_env(
        {"STEPSTREAM_API_TOKENS_FILE": str(tokens_file), "STEPSTREAM_API_TOKENS": token_line("ops", ROLES, "x")}
    )
    assert [(t.name, sorted(t.roles)) for t in settings.tokens or ()] == [
        ("ops", ["operate", "read", "write"]),
        ("deploy-bot", ["write"]),
    ]


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({"STEPSTREAM_API_AUTH": "maybe"}, "^Expected STEPSTREAM_API_AUTH to be tokens or none"),
        ({"STEPSTREAM_API_AUTH": "none", "STEPSTREAM_API_TOKENS": f"a read sha256:{'0' * 64}"}, "but both are set"),
        ({"STEPSTREAM_API_TOKENS": "a read"}, "line 1, but got 2 fields"),
        ({"STEPSTREAM_API_TOKENS": f"a admin sha256:{'0' * 64}"}, "Expected roles among read, write, operate"),
        ({"STEPSTREAM_API_TOKENS": "a read ssk_pasted-the-token"}, "sha256:<64 hex digits>.*but got something else$"),
        ({"STEPSTREAM_API_TOKENS": f"a read sha256:{'0' * 64};a write sha256:{'1' * 64}"}, "'a' appears again"),
        ({"STEPSTREAM_API_TOKENS_FILE": "/no/such/file"}, "^Expected STEPSTREAM_API_TOKENS_FILE to be readable"),
    ],
)
def test_malformed_tokens_are_refused_by_name_without_echoing_a_secret(environ: dict[str, str], reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason) as raised:
        ApiSettings.from_env(environ)
    assert "ssk_" not in str(raised.value)
