"""The one mapping from errors to HTTP answers: always JSON `{"detail": ...}`, never a traceback."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import CrawlcoinError, Throttled

log = logging.getLogger("crawlcoin.api")


def _where(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    return ".".join(parts) or "request"


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CrawlcoinError)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Throttled) else None
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in exc.errors()]  # no "input": it may hold a password
    message = "; ".join(f"{_where(tuple(e['loc']))}: {e['msg']}" for e in errors[:5])
    return JSONResponse({"detail": message or "invalid request", "errors": errors}, status_code=422)


async def _valkey_down(request: Request, exc: Exception) -> JSONResponse:
    log.error("Valkey unavailable: %s", exc)
    return JSONResponse({"detail": "service temporarily unavailable; try again shortly"}, status_code=503)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(CrawlcoinError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RedisConnectionError, _valkey_down)
    app.add_exception_handler(RedisTimeoutError, _valkey_down)
    app.add_exception_handler(Exception, _unexpected)
