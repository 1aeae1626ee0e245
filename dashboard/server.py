"""The dashboard's web server: Streamlit's own (`st.App`, Starlette on uvicorn) running `app.py`, with
headers that forbid other sites to frame it (clickjacking on the sign-in and two-factor pages)."""

from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FRAME_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
]


class FrameGuard:
    """Adds FRAME_HEADERS to every HTTP answer (the page, its scripts, health and media), not to the websocket."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in FRAME_HEADERS if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


app = st.App(Path(__file__).resolve().parent / "app.py", middleware=[Middleware(FrameGuard)])
