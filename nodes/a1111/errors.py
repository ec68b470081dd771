"""A1111's error answers.

Application errors: `{"error": <exception name>, "detail": ..., "body": ...,
"errors": <str(exception)>}`, with A1111's status codes (404 for an unknown
sampler or model, 422 for an unknown script). Request validation errors: 422
`{"detail": [{"loc": [...], "msg": ..., "type": ...}]}` as FastAPI writes them.

Where A1111 answers a predictable client mistake with a 500 (a bad base64
image, an unknown checkpoint in POST /options) the pack answers 422 or 404
with the same body shape: a 500 means the server failed, not the client.
"""
from __future__ import annotations

from typing import Any, Iterable

from aiohttp import web


class ApiError(Exception):
    """A client mistake, answered with A1111's body shape; `detail` says what to do."""

    def __init__(self, status: int, detail: Any, body: Any = "", error: str = "HTTPException"):
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body
        self.error = error

    def response(self) -> web.Response:
        return web.json_response(
            {"error": self.error, "detail": self.detail, "body": self.body, "errors": str(self)},
            status=self.status,
        )


def not_found(what: str, name: Any, available: Iterable[str] = ()) -> ApiError:
    shown = list(available)
    hint = f"; available: {', '.join(map(str, shown[:20]))}{' ...' if len(shown) > 20 else ''}" if shown else ""
    return ApiError(404, f"{what} not found: {name!r}{hint}")


def unsupported(detail: str) -> ApiError:
    return ApiError(422, detail)


def validation_response(items: list[dict]) -> web.Response:
    return web.json_response({"detail": items}, status=422)


def pydantic_errors(exc, prefix: tuple = ("body",)) -> list[dict]:
    """pydantic's ValidationError as FastAPI's 422 items (loc, msg, type)."""
    items = []
    for err in exc.errors(include_url=False):
        items.append({"loc": [*prefix, *err.get("loc", ())], "msg": err.get("msg", ""), "type": err.get("type", "")})
    return items
