"""Domain errors of the local stand-ins, mirroring Google API error statuses.

Raised in the service layer; the emulator's HTTP edge turns them into the API's error JSON
in one place (`emulator/app.py`).
"""
from __future__ import annotations


class ServiceError(Exception):
    """Base class: an HTTP status code and a Google canonical status name.

    `reason` is the `errors[].reason` of APIs that report one (Cloud Storage, BigQuery).
    """

    code = 500
    status = "INTERNAL"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidArgument(ServiceError):
    code = 400
    status = "INVALID_ARGUMENT"


class FailedPrecondition(ServiceError):
    code = 400
    status = "FAILED_PRECONDITION"


class NotFound(ServiceError):
    code = 404
    status = "NOT_FOUND"


class AlreadyExists(ServiceError):
    code = 409
    status = "ALREADY_EXISTS"


class Conflict(ServiceError):
    """409 of APIs whose conflicts are not about existence (Cloud Storage's `conflict`)."""

    code = 409
    status = "ABORTED"


class PreconditionFailed(ServiceError):
    code = 412
    status = "FAILED_PRECONDITION"


class RangeNotSatisfiable(ServiceError):
    code = 416
    status = "OUT_OF_RANGE"


class Unimplemented(ServiceError):
    """A method of the API that the local stand-in does not serve."""

    code = 501
    status = "UNIMPLEMENTED"
