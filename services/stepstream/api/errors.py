"""The api's answers other than success, raised by any route and turned into JSON by the app's handler."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An answer other than success: its status, a short error code, a sentence, and any more fields."""

    def __init__(self, status: int, error: str, message: str, **more: Any) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.more = more


def invalid(message: str) -> ApiError:
    """A request the api understands but refuses: ``422 invalid_request``."""
    return ApiError(422, "invalid_request", message)
