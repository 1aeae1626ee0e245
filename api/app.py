"""The FastAPI application factory. Connections are opened in the lifespan, never at import."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api import errors, openapi
from api.limits import BodySizeLimit
from api.routes import auth, changes, export, orders, results, schedules, service, tokens, wallet, webhooks
from api.security_headers import SecurityHeaders
from core.security import Passwords
from core.settings import Settings
from core.storage import open_store
from core.valkey import valkey, valkey_sync


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    passwords = Passwords(settings)  # here, so a bad key setting stops `serve api` with its message

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.passwords = passwords
        app.state.store = open_store(settings.resolved_store_url)
        app.state.store.recover_pending()  # finish what a crashed process left half done
        app.state.redis = valkey_sync(settings.resolved_redis_url, socket_timeout=5, health_check_interval=30)
        app.state.aredis = valkey(settings.resolved_redis_url, socket_timeout=5)
        try:
            yield
        finally:
            await app.state.aredis.aclose()
            app.state.redis.close()
            app.state.store.close()

    app = FastAPI(
        title="crawlcoin API",
        summary="Accounts, two-factor login, API tokens, coins and orders of the crawlcoin marketplace.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by `openapi.install` from the installed Swagger UI, not a CDN
        redoc_url=None,
    )
    errors.install(app)
    for router in (auth.router, tokens.router, wallet.router, orders.router, schedules.router, results.router,
                   changes.router, export.router, webhooks.router, service.router):
        app.include_router(router)
    openapi.install(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(SecurityHeaders)  # added last, so it wraps the rest: the 413 answers carry it too
    return app
