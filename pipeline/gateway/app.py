"""The gateway's ASGI application: routes, the API-key check, error bodies and the page."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from pipeline.client import ServiceError
from pipeline.settings import Settings

from .auth import CALLER_SCOPE_KEY, BearerAuth
from .backend import Backend
from .errors import ApiError, from_service
from .options import OPENAI_VOICES, model_ids, reference_voices
from .prom import render
from .speech import create_speech
from .ws import stream_socket

log = logging.getLogger("xtts_stream.gateway")
STATIC = Path(__file__).resolve().parent / "static"


@dataclass
class Gateway:
    settings: Settings
    keys: list[bytes] | None
    # The process's own start and stop around serving (control socket, address file); None when embedded.
    around: Callable[[], contextlib.AbstractAsyncContextManager] | None = None
    backend: Backend | None = None
    caller_key: str = CALLER_SCOPE_KEY
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=False))

    def __post_init__(self) -> None:
        svc = self.settings.service
        self.max_body_bytes = svc.max_message_bytes  # the same bound a ZeroMQ message has
        self.max_backlog_s = svc.max_client_backlog_s
        self.requests = Counter("xtts_gateway_requests", "HTTP requests and WebSocket sessions the gateway answered, "
                                "by route and status.", ["route", "status"], registry=self.registry)


# -- routes --------------------------------------------------------------------

async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    try:
        reply = await request.app.state.gateway.backend.status()
    except ServiceError as exc:
        return JSONResponse({"ready": False, "reason": str(exc)}, status_code=503)
    draining = bool(reply.state.get("draining"))
    serving = bool(reply.state.get("serving")) and reply.healthy and not draining
    body = {"ready": serving, "serving": bool(reply.state.get("serving")), "healthy": reply.healthy,
            "draining": draining}
    return JSONResponse(body, status_code=200 if serving else 503)


async def metrics(request: Request) -> Response:
    gateway = request.app.state.gateway
    try:
        reply = await gateway.backend.status()
    except ServiceError as exc:
        raise from_service(exc.code, f"the coordinator did not answer: {exc.message}") from None
    state = reply.state
    return Response(render(reply.healthy, state, gateway.registry),
                    media_type="text/plain; version=0.0.4; charset=utf-8")


async def models(request: Request) -> Response:
    settings = request.app.state.gateway.settings
    default = settings.service.default_profile
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "xtts-stream", "profile": profile or default}
            for name, profile in model_ids(settings).items()]
    return JSONResponse({"object": "list", "data": data})


async def voices(request: Request) -> Response:
    gateway = request.app.state.gateway
    engine = ""
    with contextlib.suppress(ServiceError):
        engine = (await gateway.backend.status()).state.get("engine", {}).get("engine", "")
    data: list[dict[str, Any]] = [{"id": "default", "description": "the service's default voice"}]
    data += [{"id": name, "alias_of": "default", "description": "OpenAI voice name, spoken in the default voice"}
             for name in OPENAI_VOICES]
    if engine != "piper":  # Piper speaks with one voice; XTTS takes reference recordings
        data += [{"id": name, "description": "reference recording in voices_dir"}
                 for name in reference_voices(gateway.settings)]
    return JSONResponse({"object": "list", "engine": engine, "data": data})


async def page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})


# -- errors --------------------------------------------------------------------

async def api_error(request: Request, exc: ApiError) -> Response:
    return exc.response()


async def http_error(request: Request, exc: HTTPException) -> Response:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return ApiError(exc.status_code, code, str(exc.detail)).response()


async def unexpected(request: Request, exc: Exception) -> Response:
    log.exception("request %s %s failed", request.method, request.url.path)
    return ApiError(502, "internal", f"the gateway could not answer: {type(exc).__name__}").response()


# -- the application ----------------------------------------------------------

def build_app(gateway: Gateway) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(app):
        gateway.backend = Backend(gateway.settings)
        try:
            async with gateway.around() if gateway.around else contextlib.nullcontext():
                yield
        finally:
            await gateway.backend.close()

    routes = [
        Route("/", page),
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", metrics),
        Route("/v1/models", models),
        Route("/v1/audio/voices", voices),
        Route("/v1/audio/speech", create_speech, methods=["POST"]),
        WebSocketRoute("/v1/audio/stream", stream_socket),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={ApiError: api_error, HTTPException: http_error, Exception: unexpected})
    app.state.gateway = gateway
    return RequestCounter(BearerAuth(app, gateway.keys), gateway)


class RequestCounter:
    """Counts every answer by route and status, for the gateway's own line in /metrics."""

    ROUTES = ("/v1/audio/speech", "/v1/audio/stream", "/v1/models", "/v1/audio/voices", "/metrics", "/ready",
              "/health", "/")

    def __init__(self, app, gateway: Gateway):
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = path if path in self.ROUTES else "/static" if path.startswith("/static/") else "other"
        status = {"code": "0"}

        async def counted(message):
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                status["code"] = str(message["status"])
            elif message["type"] == "websocket.accept":
                status["code"] = "101"
            await send(message)
        try:
            await self.app(scope, receive, counted)
        finally:
            self.gateway.requests.labels(route, status["code"]).inc()
