"""HTTP errors the app raises for bad client input.

MONAI Label's endpoints call the app synchronously, so an ``HTTPException`` raised by the app, its datastore or its
tasks reaches FastAPI's handler and the client gets the status with ``{"detail": message}`` instead of a 500.
"""

from __future__ import annotations

from fastapi import HTTPException

__all__ = ["BadRequest", "Conflict", "NotFound", "UnprocessableLabel", "UnsupportedMedia"]


class BadRequest(HTTPException):
    """400: a malformed request (unsafe id, unknown parameter value)."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=400, detail=message)


class NotFound(HTTPException):
    """404: an unknown model, strategy or image id."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=404, detail=message)


class Conflict(HTTPException):
    """409: the request is valid but the server state does not allow it yet (e.g. a model without weights)."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=409, detail=message)


class UnsupportedMedia(HTTPException):
    """415: an upload that is not an image/label file this app reads."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=415, detail=message)


class UnprocessableLabel(HTTPException):
    """422: a readable label that does not fit its image (size, slices, label values)."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=422, detail=message)
