"""WebSocket `/api/v1/executions/{id}/ws`: the execution's events live, and a `cancel` command.

No secret travels in the URL: the client's first message authenticates,
`{"type": "auth", "token": "<access token or API key>"}`, within a few seconds. Then the
server sends each event as `{"type": "event", "event": {...}}` (resuming after `?after=`) and
a final `{"type": "end"}`; the client may send `{"type": "cancel", "mode": "immediate"}`.
Close codes: 4401 authentication failed, 4404 no such execution; a bad command gets
an `{"type": "error"}` reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from app.core.errors import ProblemError
from app.services.auth import AuthService
from app.services.executions import ExecutionService, event_stream

router = APIRouter()

AUTH_TIMEOUT_SECONDS = 5.0


async def _authenticate(websocket: WebSocket) -> Any:
    app = websocket.app
    try:
        async with asyncio.timeout(AUTH_TIMEOUT_SECONDS):
            message = await websocket.receive_json()
    except (TimeoutError, ValueError, KeyError):
        return None
    token = message.get("token") if isinstance(message, dict) else None
    if not isinstance(message, dict) or message.get("type") != "auth" or not isinstance(token, str):
        return None
    async with app.state.database.session() as session:
        try:
            return await AuthService(session, app.state.codec).authenticate(token)
        except ProblemError:
            return None


@router.websocket("/executions/{execution_id}/ws")
async def execution_socket(
    websocket: WebSocket, execution_id: uuid.UUID, after: int = Query(default=0, ge=0)
) -> None:
    await websocket.accept()
    principal = await _authenticate(websocket)
    if principal is None:
        await websocket.close(code=4401, reason="authentication failed")
        return
    app = websocket.app
    runtime = app.state.runtime
    async with app.state.database.session() as session:
        try:
            await ExecutionService(session, app.state.settings).get(principal, execution_id)
        except ProblemError:
            await websocket.close(code=4404, reason="no such execution")
            return

    async def commands() -> None:
        while True:
            message = await websocket.receive_json()
            if not isinstance(message, dict) or message.get("type") != "cancel":
                await websocket.send_json({"type": "error", "detail": "unknown command"})
                continue
            mode = message.get("mode", "immediate")
            if mode not in ("immediate", "after_step"):
                await websocket.send_json(
                    {"type": "error", "detail": "mode is immediate or after_step"}
                )
                continue
            async with app.state.database.session() as session:
                try:
                    await ExecutionService(session, app.state.settings).cancel(
                        principal, execution_id, mode, runtime.runner, runtime.hub
                    )
                    await websocket.send_json({"type": "cancel_accepted", "mode": mode})
                except ProblemError as exc:
                    await websocket.send_json({"type": "error", "detail": exc.detail})

    listener = asyncio.create_task(commands())
    try:
        async for event in event_stream(runtime.database, runtime.hub, execution_id, after, 15.0):
            if listener.done():
                break
            if event is None:
                await websocket.send_json({"type": "keep-alive"})
            else:
                await websocket.send_json({"type": "event", "event": event.model_dump(mode="json")})
        else:
            await websocket.send_json({"type": "end"})
            await websocket.close()
    except WebSocketDisconnect:
        pass
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, Exception):
            await listener
