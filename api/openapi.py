"""What the OpenAPI document says beyond the code: the error answers of each operation, readable
summaries, and the Swagger UI (5.x, which reads OpenAPI 3.1) served from the installed `swagger-ui-py`
package (no CDN: `/docs` works offline)."""

from importlib.resources import files
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from core.schemas import ErrorOut

_MEANING = {
    401: "Not logged in, or the session has ended: send `Authorization: Bearer <access_token>`.",
    402: "Not enough coins in your wallet.",
    403: "Not allowed (e.g. two-factor enrolment not finished).",
    404: "No such resource among yours (or the feature is off in this mode).",
    409: "Conflicts with the current state, or the Idempotency-Key was used for another request.",
    410: "Deleted after its retention period: the rest of the record stays.",
    413: "Request body too large.",
    422: "Invalid input: `detail` says what, `errors` lists each field.",
    429: "Too many attempts: the Retry-After header says when to try again.",
    503: "Valkey or the store is unavailable; try again shortly.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each error status it can answer, with the error schema."""
    return {code: {"model": ErrorOut, "description": _MEANING[code]} for code in codes}


def _refine(doc: dict[str, Any]) -> dict[str, Any]:
    """Each summary from the docstring's first line ("Log in with password …"), not the function name
    ("Login"); the 422 that FastAPI adds to every operation with parameters in the API's one error schema."""
    for item in doc.get("paths", {}).values():
        for op in item.values():
            if op.get("description"):
                op["summary"] = op["description"].strip().splitlines()[0].rstrip(".")
            if "422" in op.get("responses", {}):
                op["responses"]["422"] = {"description": _MEANING[422], "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ErrorOut"}}}}
    schemas = doc.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return doc


def install(app: FastAPI, docs_url: str = "/docs") -> None:
    """Call after the routers are included; `app` must be created with `docs_url=None, redoc_url=None`."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _refine(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    static = f"{docs_url}/static"
    app.mount(static, StaticFiles(directory=str(files("swagger_ui") / "static")), name="swagger-ui")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(docs_url, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{app.title} – docs",
                                   swagger_js_url=f"{static}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{static}/swagger-ui.css",
                                   swagger_favicon_url=f"{static}/favicon-32x32.png")
