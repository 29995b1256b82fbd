"""A clear refusal, at start, of credentials and certificates the cluster will never accept.

The Kafka clients retry whatever fails at their bootstrap, and a wrong password or an untrusted broker
certificate would then read as "Unable to bootstrap", over and over, like a broker that is down. So
before a service starts its clients, one connection to the first bootstrap server is made the way they
make theirs: a TLS handshake the configured CA rejects, or SASL credentials the broker refuses, stop
the service with what is wrong and which setting to fix. A broker that cannot be reached (not up yet)
is left to the clients' retries, as before.
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed

from stepstream.config import KafkaSettings
from stepstream.errors import StepstreamError

_TIMEOUT_S = 10.0


class KafkaAccessError(StepstreamError):
    """The cluster refuses this process's credentials, or this process does not trust the cluster."""


async def check_access(settings: KafkaSettings) -> None:
    """Raise :class:`KafkaAccessError` if the first bootstrap server refuses these settings for good."""
    if settings.security_protocol == "PLAINTEXT":
        return
    server = settings.bootstrap_servers.split(",")[0].strip()
    host, _, port = server.rpartition(":")
    options = settings.client_options()
    try:
        connection = await asyncio.wait_for(
            create_conn(
                host.strip("[]"),
                int(port),
                ssl_context=options.get("ssl_context"),
                security_protocol=settings.security_protocol,
                sasl_mechanism=settings.sasl_mechanism or "PLAIN",
                sasl_plain_username=settings.sasl_username,
                sasl_plain_password=settings.sasl_password,
            ),
            _TIMEOUT_S,
        )
    except ssl.SSLCertVerificationError as error:
        trusted = settings.ssl_cafile or "the system's certificate authorities"
        raise KafkaAccessError(
            f"Expected Kafka at {server} to present a certificate that {trusted} "
            f"(STEPSTREAM_KAFKA_SSL_CAFILE) trusts, but {error.verify_message or error}: set "
            "STEPSTREAM_KAFKA_SSL_CAFILE to the cluster's CA certificate"
        ) from None
    except SaslAuthenticationFailed as error:
        raise KafkaAccessError(
            f"Expected Kafka at {server} to accept user {settings.sasl_username!r} with {settings.sasl_mechanism} "
            f"(STEPSTREAM_KAFKA_SASL_USERNAME, STEPSTREAM_KAFKA_SASL_PASSWORD, STEPSTREAM_KAFKA_SASL_MECHANISM), "
            f"but it refuses them: {error}"
        ) from None
    except (OSError, TimeoutError, KafkaError, ValueError):
        return  # not reachable now, or another fault: the clients retry and report as they do
    connection.close()
