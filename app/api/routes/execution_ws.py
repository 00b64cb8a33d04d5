"""WebSocket `/api/v1/executions/{id}/ws`: the execution's events live, and a `cancel` command.

No secret travels in the URL: the client's first message authenticates,
`{"type": "auth", "token": "<access token or API key>"}`, within a few seconds. Then the
server sends each event as `{"type": "event", "event": {...}}` (resuming after `?after=`) and
a final `{"type": "end"}`; the client may send `{"type": "cancel", "mode": "immediate"}`.
Messages are parsed as strictly as request bodies (no NUL characters, non-finite numbers
or nesting past `RENUM_MAX_JSON_DEPTH`). Close codes: 4401 authentication failed (a first
message that is not a valid `auth` one included), 4404 no such execution, 4429 throttled (the
client's address, or its rate limit: as HTTP's 429; failed authentications and unknown
executions are counted like 401s and 404s), 1001 the server is shutting down (reconnect and
resume with `?after=` the last `seq` received); a bad command gets an `{"type": "error"}`
reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from fastapi import Query, WebSocket, WebSocketDisconnect

from app.api.deps import (
    CodecDep,
    DatabaseDep,
    RuntimeDep,
    ScreenDep,
    SettingsDep,
    ShutdownDep,
)
from app.api.router import PrefixRouter
from app.core.errors import ProblemError, TooManyRequests
from app.core.input_limits import UnsafeInput, strict_loads
from app.schemas.executions import DEFAULT_CANCEL_MODE
from app.services.events import StreamsClosed
from app.services.live_executions import LiveExecutionService
from app.services.principal import Principal

router = PrefixRouter()

AUTH_TIMEOUT_SECONDS = 5.0
KEEP_ALIVE_SECONDS = 15.0
GOING_AWAY = 1001  # RFC 6455: the server is going down
TOO_MANY = 4429  # the client's address or its rate limit is throttled (as HTTP's 429)


async def _receive(websocket: WebSocket, max_depth: int) -> Any:
    """The next message, parsed as strictly as a request body (the same input limits);
    ``ValueError`` if it is not JSON or breaks a limit, ``KeyError`` if it is not text."""
    text = await websocket.receive_text()
    if not isinstance(text, str):
        raise ValueError("not a text message")
    return strict_loads(text, max_depth=max_depth)


async def _authenticate(
    websocket: WebSocket, live: LiveExecutionService, max_depth: int
) -> Principal | None:
    """The caller named by the first message, a valid ``auth`` one sent in time; else None."""
    try:
        async with asyncio.timeout(AUTH_TIMEOUT_SECONDS):
            message = await _receive(websocket, max_depth)
    except (TimeoutError, ValueError, KeyError):
        return None
    token = message.get("token") if isinstance(message, dict) else None
    if not isinstance(message, dict) or message.get("type") != "auth" or not isinstance(token, str):
        return None
    return await live.authenticate(token)


@router.websocket("/executions/{execution_id}/ws")
async def execution_socket(
    websocket: WebSocket,
    execution_id: uuid.UUID,
    database: DatabaseDep,
    settings: SettingsDep,
    codec: CodecDep,
    runtime: RuntimeDep,
    shutdown: ShutdownDep,
    screen: ScreenDep,
    after: int = Query(default=0, ge=0),
) -> None:
    live = LiveExecutionService(database, settings, codec, runtime)
    max_depth = settings.max_json_depth
    await websocket.accept()
    scope = websocket.scope
    try:  # the throttling, as for a request: the client's address, then the rate limits
        if screen is not None:
            screen.source(scope)
        principal = await _authenticate(websocket, live, max_depth)
        if principal is None:
            if screen is not None:
                await screen.invalid_credential(scope)
            await websocket.close(code=4401, reason="authentication failed")
            return
        if screen is not None:
            screen.principal(scope, principal)
    except TooManyRequests:
        await websocket.close(code=TOO_MANY, reason="too many requests")
        return
    if not await live.visible(principal, execution_id):
        if screen is not None:
            await screen.not_found(scope)
        await websocket.close(code=4404, reason="no such execution")
        return

    async def commands() -> None:
        while True:
            try:
                message = await _receive(websocket, max_depth)
            except UnsafeInput as exc:
                await websocket.send_json({"type": "error", "detail": str(exc)})
                continue
            except (ValueError, KeyError):
                await websocket.send_json({"type": "error", "detail": "send JSON text"})
                continue
            if not isinstance(message, dict) or message.get("type") != "cancel":
                await websocket.send_json({"type": "error", "detail": "unknown command"})
                continue
            mode = message.get("mode", DEFAULT_CANCEL_MODE)
            try:
                if screen is not None:
                    screen.principal(scope, principal)  # each command takes a token
                await live.cancel(principal, execution_id, mode)
                await websocket.send_json({"type": "cancel_accepted", "mode": mode})
            except ProblemError as exc:
                await websocket.send_json({"type": "error", "detail": exc.detail})

    listener = asyncio.create_task(commands())
    try:
        with shutdown.hold():  # the server waits for the goodbye below
            try:
                async for event in live.events(execution_id, after, KEEP_ALIVE_SECONDS):
                    if listener.done():
                        break
                    if event is None:
                        await websocket.send_json({"type": "keep-alive"})
                    else:
                        message = {"type": "event", "event": event.model_dump(mode="json")}
                        await websocket.send_json(message)
                else:
                    await websocket.send_json({"type": "end"})
                    await websocket.close()
            except StreamsClosed:
                await websocket.close(code=GOING_AWAY, reason="server shutting down")
    except WebSocketDisconnect:
        pass
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
            await listener
