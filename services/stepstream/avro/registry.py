"""A client of a schema registry that speaks the Confluent Schema Registry REST API.

The codec (``codec.py``) uses it when ``STEPSTREAM_SCHEMA_REGISTRY_URL`` is set: at start, to
register the current schema of every record type and learn the ids the registry gave every version of
them; and while running, to look up a schema id it has not seen (a newer engine's, during a rolling
upgrade). Calls are synchronous and few: one round of registrations per process start, one lookup
per new id. Apicurio Registry, Confluent's and Karapace all serve this API.

Subjects are named by record (Confluent's ``RecordNameStrategy``: ``stepstream.RunStarted``): a
topic carries several record types (``events`` carries nineteen), so the topic-named default, one
schema per topic, cannot describe it. A subject the engine creates is set to ``BACKWARD``
compatibility, the engine's own rule (a reader reads every record written before it); an operator may
set another level on it, which the engine then leaves alone.
"""

from __future__ import annotations

import json
from typing import Any, Self
from urllib.parse import quote

import httpx

from stepstream.avro.schemas import SchemaError
from stepstream.errors import StepstreamError

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryUnavailable(StepstreamError):
    """The registry did not answer, or answered with a server error: the record is not at fault, so it
    is not dead-lettered; the service stops and is restarted, as when Kafka is unreachable."""


class SchemaRegistry:
    """The few calls the codec needs, against ``url`` (such as ``http://registry:8080/apis/ccompat/v7``)."""

    def __init__(self, url: str, *, timeout_s: float = 10.0, compatibility: str = "BACKWARD") -> None:
        self.url = url.rstrip("/")
        self._compatibility = compatibility
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s, headers={"Accept": _CONTENT_TYPE})

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def subjects(self) -> set[str]:
        return set(self._call("GET", "/subjects"))

    def register(self, subject: str, schema: dict[str, Any], *, new: bool | None = None) -> int:
        """The id of ``schema`` under ``subject``, registered if new; the registry checks it against the
        subject's earlier versions by the subject's compatibility level. ``new``: whether the subject
        is new, when the caller knows (one :meth:`subjects` call for many registrations).

        Raises :class:`SchemaError` naming the subject when the registry refuses it as incompatible.
        """
        if new if new is not None else not self.versions(subject):
            # A new subject: the engine's rule, unless an operator set another one first.
            self._call("PUT", f"/config/{quote(subject, safe='')}", json={"compatibility": self._compatibility})
        answer = self._call(
            "POST", f"/subjects/{quote(subject, safe='')}/versions", json={"schema": json.dumps(schema)}, refusal=True
        )
        return int(answer["id"])

    def versions(self, subject: str) -> list[int]:
        """The version numbers registered under ``subject``; none for a subject the registry does not know."""
        answer = self._call("GET", f"/subjects/{quote(subject, safe='')}/versions", missing_ok=True)
        return [int(version) for version in answer or []]

    def schema(self, schema_id: int) -> dict[str, Any] | None:
        """The schema the registry gave ``schema_id``; ``None`` if it has no such id."""
        answer = self._call("GET", f"/schemas/ids/{schema_id}", missing_ok=True)
        return None if answer is None else json.loads(answer["schema"])

    def _call(
        self, method: str, path: str, *, json: Any = None, missing_ok: bool = False, refusal: bool = False
    ) -> Any:
        headers = {"Content-Type": _CONTENT_TYPE} if json is not None else None
        try:
            response = self._client.request(method, path, json=json, headers=headers)
        except httpx.HTTPError as error:
            raise RegistryUnavailable(f"Expected the schema registry at {self.url} to answer, but {error!r}") from error
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code in (409, 422) and refusal:
            raise SchemaError(
                f"Expected the schema registry at {self.url} to accept the current schema for {path.split('/')[2]}, "
                f"but it refuses it ({response.status_code}: {_message(response)}): the schema is incompatible with "
                "the versions registered before under the subject's compatibility level. Keep the earlier shape "
                "readable (schemas/README.md) or, if the change is deliberate, change the subject's level"
            )
        if response.status_code >= 400:
            raise RegistryUnavailable(
                f"Expected the schema registry at {self.url} to answer {method} {path}, "
                f"but it answered {response.status_code}: {_message(response)}"
            )
        return response.json()


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return response.text[:200]
