"""Errors as the gateway answers them: an HTTP status and a JSON body naming the field.

The body has OpenAI's shape, so OpenAI's SDKs raise their usual exception
classes: ``{"error": {"message", "type", "param", "code"}}``. ``param`` names
the request field at fault (None when none is), ``code`` is the service's
error code (the same codes as the ZeroMQ protocol) or the gateway's own.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

# Service error codes (docs/protocol.md) -> (HTTP status, the request field at fault).
_SERVICE_CODES: dict[str, tuple[int, str | None]] = {
    "bad_profile": (400, "profile"), "bad_language": (400, "language"), "bad_voice": (400, "voice"),
    "text_too_long": (400, "input"), "nothing_to_speak": (400, "input"), "bad_deliver": (400, None),
    "bad_request": (400, None), "bad_stream_id": (400, None), "stream_exists": (409, None),
    "unknown_stream": (409, None), "stream_ended": (409, None), "idle_timeout": (408, None),
    "too_many_streams": (429, None), "slow_client": (408, None),
    "starting": (503, None), "no_worker": (503, None), "worker_died": (503, None), "sink_restarted": (503, None),
    "sink_unavailable": (503, None), "shutting_down": (503, None), "connection_lost": (503, None),
    "unhealthy": (503, None), "timeout": (504, None),
    "chunk_failed": (502, None), "delivery_failed": (502, None), "internal": (502, None),
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "service_unavailable_error"
        if self.status in (401, 403):
            kind = "authentication_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status in (429, 503) else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def field_error(param: str, message: str, code: str = "invalid_field") -> ApiError:
    return ApiError(400, code, message, param)


def from_service(code: str, message: str, param: str | None = None) -> ApiError:
    """A `ServiceError` from the coordinator as the HTTP error it stands for."""
    status, field = _SERVICE_CODES.get(code, (400, None))
    return ApiError(status, code, message, param or field)
