"""Stepstream's exceptions.

Every exception Stepstream raises on purpose derives from one root, so a caller can catch them all
without catching a bug's ``TypeError`` too. Each subclass lives next to the code that raises it::

    StepstreamError                 the root
     ├── ConfigurationError         stepstream.config: a setting is missing or malformed
     ├── KafkaProvisioningError     here: no local Kafka broker or topics could be set up
     ├── SignatureError             stepstream.signing: a delivery's signature is missing, forged or stale
     ├── DecodeError, EncodeError   stepstream.avro: a record the codec cannot read or write
     ├── SchemaError                stepstream.avro: the schema files are missing or do not match, or a
     │                              schema registry refuses one as incompatible
     ├── RegistryUnavailable        stepstream.avro.registry: the schema registry does not answer
     ├── RegistryProvisioningError  stepstream.avro.local_registry: no local schema registry could be set up
     ├── ExportError                stepstream.history: a file that is not an export of histories
     └── StepstreamSDKError         stepstream.sdk: the SDK's own tree, drawn in ``stepstream.sdk._errors``
"""


class StepstreamError(Exception):
    """The root of every exception Stepstream raises on purpose."""


class KafkaProvisioningError(StepstreamError):
    """A local Kafka broker could not be provisioned, started or stopped, or the topics could not be set up.

    The message says what is missing and which alternatives exist; retrying the same call will not help.
    """
