"""The SDK's exceptions.

Raise :class:`NonRetryableError` or :class:`RetryAfterError` from a step or from workflow code to
choose how the engine treats the failure; any other exception is retried with backoff::

    StepstreamError                 stepstream.errors: the root of every Stepstream exception
     ├── SignatureError             stepstream.signing: a delivery's signature is missing, forged or stale
     └── StepstreamSDKError         the root of the SDK's exceptions
          ├── ConfigurationError    the Workflows object or a workflow is set up wrongly
          ├── NondeterminismError   the code called different steps than the run's history records
          ├── NonRetryableError     fail the run now: retrying cannot help
          └── RetryAfterError       retry, but not before ``retry_after``

    BaseException
     └── DeliverySuspended          internal: unwinds the workflow function when a delivery ends
"""

from __future__ import annotations

from datetime import timedelta

from stepstream.errors import StepstreamError


class StepstreamSDKError(StepstreamError):
    """The root of the SDK's exceptions."""


class ConfigurationError(StepstreamSDKError):
    """The :class:`~stepstream.sdk.Workflows` object or a workflow is set up wrongly; raised at startup."""


class NondeterminismError(StepstreamSDKError):
    """The workflow called a different step than the run's history records at that index.

    The code changed under a running run, or it branches on something that is not a step's output
    (the clock, randomness, the environment). Not retryable: the same code would fail the same way.
    """


class NonRetryableError(StepstreamSDKError):
    """Fails the run at once, without retries. Subclass it for your own terminal errors."""


class RetryAfterError(StepstreamSDKError):
    """Retries the delivery, but not before ``retry_after`` (a ``timedelta`` or seconds) has passed."""

    def __init__(self, message: str, retry_after: timedelta | float) -> None:
        super().__init__(message)
        delay = retry_after if isinstance(retry_after, timedelta) else timedelta(seconds=retry_after)
        if delay < timedelta(0):
            raise ValueError(f"Expected retry_after to be zero or more, but got {retry_after!r}")
        self.retry_after = delay

    @property
    def retry_after_ms(self) -> int:
        return round(self.retry_after.total_seconds() * 1000)


class DeliverySuspended(BaseException):
    """Unwinds workflow code once the delivery's answer is decided: raised by ``ctx.cancel()`` and by
    any step called after the answer (a suspension, a continue, a failure) is fixed.

    A ``BaseException`` so that a user's ``except Exception`` cannot swallow it and run on with steps
    the engine will never see. The answer itself is kept by the replay machine, not carried here, so
    even code that does swallow it cannot change the answer.
    """
