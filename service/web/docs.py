"""The API's documentation pages, served with no CDN: Swagger UI at ``/docs`` and ReDoc at ``/redoc``.

FastAPI's own pages load their scripts and styles from a public CDN, so on a host with no internet (GPU hosts
often have none) they stay blank. Here the same pages (``fastapi.openapi.docs``) load them from
``/docs/assets``, the static folder of the installed ``fastapi-offline`` package (Swagger UI 5's bundle and
styles, ReDoc's standalone bundle, a favicon). None of these routes is in the OpenAPI schema, and none needs
an API key.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS, REDOC, OAUTH2_REDIRECT, ASSETS = "/docs", "/redoc", "/docs/oauth2-redirect", "/docs/assets"
PACKAGE = ("fastapi_offline", "static")  # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png


def install(app: FastAPI) -> None:
    """Add the pages and their assets to ``app``, made with ``docs_url=None, redoc_url=None``."""
    assert app.docs_url is None and app.redoc_url is None and app.openapi_url, "FastAPI's CDN pages are on"
    openapi_url = app.openapi_url
    app.mount(ASSETS, StaticFiles(packages=[PACKAGE]), name="docs-assets")

    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(DOCS, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=root(request) + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root(request)}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root(request)}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root(request)}{ASSETS}/favicon.png",
            oauth2_redirect_url=root(request) + OAUTH2_REDIRECT,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=root(request) + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root(request)}{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root(request)}{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
