"""The two apps the overhead budget compares, as Uvicorn factories (``--factory``): a bare
FastAPI app with one small JSON route, and Renum's app, every capability switched on, with the
same route added after all of its own (a route every request has to be matched past).

Renum's settings come from the environment like a deployed backend's (``RENUM_*``); the
benchmark gives it a temporary SQLite database and a loopback model endpoint."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from app.core.config import Settings
from app.main import create_app

ROUTE = "/bench/json"


async def small_json() -> JSONResponse:
    return JSONResponse({"status": "ok", "items": [1, 2, 3]})


def bare() -> FastAPI:
    app = FastAPI()
    app.add_api_route(ROUTE, small_json)
    return app


def renum() -> FastAPI:
    app = create_app(Settings())
    app.add_api_route(ROUTE, small_json, include_in_schema=False)
    return app
