"""One guard for the pack's HTTP handlers: known errors become their answers, the server keeps serving.

The A1111 routes and the workflow endpoints answer mistakes in different
shapes (A1111's `{"error", "detail", "body", "errors"}`, a 422 `detail`
list), but the rule is the same: an error the handler expects is turned into
its response, a cancelled request or an aiohttp HTTP exception passes
through, and anything else is logged with its traceback and answered 500 with
the exception's name instead of a dropped connection.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(
    answers: dict[type, Callable[[Exception], web.StreamResponse]],
    unexpected: Callable[[Exception], web.StreamResponse],
    log: logging.Logger,
    what: str,
) -> Callable[[Handler], Handler]:
    """A decorator for aiohttp handlers; `answers` maps exception types (checked in order) to responses."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except (asyncio.CancelledError, web.HTTPException):
                raise
            except Exception as exc:  # noqa: BLE001 - answered, and the server keeps serving
                for kind, answer in answers.items():
                    if isinstance(exc, kind):
                        return answer(exc)
                log.exception("%s error on %s %s", what, request.method, request.path)
                return unexpected(exc)

        return wrapped

    return decorate
