"""`python -m nodes.cluster.gateway`: one address in front of many ComfyUI workers.

It answers like a single ComfyUI with the pack, but every job goes on the
Celery queue in Redis and runs on whichever worker takes it:

- `POST /prompt` (`prompt_id`s of its own; `X-Request-Id` or `request_id`
  makes a resubmission return the first job), `GET /prompt`, `GET /history`,
  `GET /history/{prompt_id}`, `GET /view` (fetched from the worker that made
  the picture), `POST /upload/image` (kept in Redis, copied to the worker
  before the job), `GET /ws` (progress and previews relayed from the worker),
  `POST /interrupt` and `POST /queue` `{"delete": [...]}` (cancel by id);
- `POST /sdapi/v1/txt2img`, `/sdapi/v1/img2img`, `/ds/workflows/{name}/run`
  (and `/diffusers_studio/workflows/{name}`), answered when the picture is
  ready; a client that disconnects first cancels its job;
- `GET /ready`: queue depth and live workers; 503 when the queue is full or
  no worker is alive (the submit routes then answer 503 too).

    DS_CLUSTER_REDIS_URL=redis://127.0.0.1:6379/0 python -m nodes.cluster.gateway --port 8190
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from . import keys, routing
from .celery_app import make_app
from .config import Settings
from .jobs import Jobs, QueueFull
from .watchdog import Watchdog
from .ws_hub import Hub

log = logging.getLogger("ds.cluster.gateway")
MAX_BODY = 64 * 1024 * 1024
UPLOAD_NAME_RE = re.compile(r"^[\w][\w .()+-]{0,127}$")
HTTP_JOB_ROUTES = ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/ds/workflows/{name}/run",
                   "/diffusers_studio/workflows/{name}")

JOBS, HUB, REDIS, SETTINGS, HTTP, WATCHDOG = (
    web.AppKey(n, object) for n in ("jobs", "hub", "redis", "settings", "http", "watchdog"))


def _error(status: int, message: str, kind: str = "invalid_request") -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message, "details": "", "extra_info": {}},
                              "node_errors": {}}, status=status)


async def _json_body(request: web.Request):
    try:
        return await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": {"type": "invalid_json", "message":
                                 "the body is not JSON; send Content-Type: application/json with a JSON object"}}),
                                 content_type="application/json") from None


def _request_id(request: web.Request, body: dict):
    return request.headers.get("X-Request-Id") or (body.get("request_id") if isinstance(body, dict) else None)


# ------------------------------------------------------------------ ComfyUI API
async def post_prompt(request: web.Request) -> web.Response:
    body = await _json_body(request)
    graph = body.get("prompt") if isinstance(body, dict) else None
    if not isinstance(graph, dict) or not graph:
        return _error(400, "no prompt: send {\"prompt\": {<node id>: {\"class_type\": ..., \"inputs\": {...}}}} "
                      "in ComfyUI's API format", "no_prompt")
    jobs: Jobs = request.app[JOBS]
    try:
        prompt_id, _ = await jobs.submit(keys.KIND_PROMPT, {"prompt": graph}, request_id=_request_id(request, body),
                                         client_id=body.get("client_id"), models=routing.models_of_prompt(graph))
    except QueueFull as exc:
        return _error(503, str(exc), "queue_full")
    except ValueError as exc:
        return _error(400, str(exc))
    number = await request.app[REDIS].incr(keys.PREFIX + "number")
    return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})


async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response({"exec_info": {"queue_remaining": await request.app[JOBS].depth()}})


def _history_entry(result: dict) -> dict | None:
    entry = result.get("history")
    if entry is None:
        return None
    return {**entry, "ds_cluster": {"worker": result.get("worker"), "state": result.get("state")}}


async def get_history(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    result = await request.app[JOBS].result(prompt_id)
    entry = _history_entry(result) if result else None
    return web.json_response({prompt_id: entry} if entry else {})


async def get_history_all(request: web.Request) -> web.Response:
    r = request.app[REDIS]
    try:
        count = max(1, int(request.query.get("max_items", 200)))
    except ValueError:
        return _error(400, f"max_items={request.query.get('max_items')!r} is not a whole number")
    ids = await r.lrange(keys.HISTORY, 0, count - 1)
    raws = await r.mget([keys.result(i) for i in ids]) if ids else []
    out = {}
    for prompt_id, raw in zip(reversed(ids), reversed(raws)):  # oldest first, as ComfyUI
        entry = _history_entry(json.loads(raw)) if raw else None
        if entry:
            out[prompt_id] = entry
    return web.json_response(out)


async def view(request: web.Request) -> web.Response:
    """Fetch the file from the worker named by the subfolder's first part (runner.rewrite_image_refs)."""
    worker, _, subfolder = request.query.get("subfolder", "").partition("/")
    url = await request.app[REDIS].hget(keys.WORKERS, worker) if worker else None
    if not url:
        return _error(404, f"subfolder {request.query.get('subfolder', '')!r} names no worker of this cluster; "
                      "use the image reference /history gave")
    params = {**request.query, "subfolder": subfolder}
    try:
        async with request.app[HTTP].get(url + "/view", params=params) as upstream:
            data = await upstream.read()
            return web.Response(body=data, status=upstream.status,
                                content_type=upstream.content_type or "application/octet-stream")
    except aiohttp.ClientError as exc:
        return _error(502, f"worker {worker} ({url}) holding this file does not answer: {exc}", "worker_unreachable")


async def upload_image(request: web.Request) -> web.Response:
    reader = await request.multipart()
    async for part in reader:
        if part.name != "image":
            continue
        name = (part.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
        if not UPLOAD_NAME_RE.match(name):
            return _error(400, f"image file name {name!r} is not allowed: use letters, digits, '.', '-', '_', ' '")
        data = await part.read()
        await request.app[REDIS].set(keys.upload(name), data, ex=int(request.app[SETTINGS].result_ttl))
        return web.json_response({"name": name, "subfolder": "", "type": "input"})
    return _error(400, "no 'image' file in the multipart body")


async def interrupt(request: web.Request) -> web.Response:
    body = await _json_body(request) if request.can_read_body else {}
    prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
    if not prompt_id:
        return _error(400, "POST /interrupt on the cluster needs {\"prompt_id\": ...}: many prompts run at once")
    return web.json_response({"prompt_id": prompt_id, "state": await request.app[JOBS].cancel(prompt_id)})


async def post_queue(request: web.Request) -> web.Response:
    body = await _json_body(request)
    ids = body.get("delete") if isinstance(body, dict) else None
    if not isinstance(ids, list):
        return _error(400, "POST /queue on the cluster takes {\"delete\": [prompt ids]}")
    jobs: Jobs = request.app[JOBS]
    return web.json_response({pid: await jobs.cancel(str(pid)) for pid in ids})


async def websocket(request: web.Request) -> web.StreamResponse:
    return await request.app[HUB].handle(request, await request.app[JOBS].depth())


# ------------------------------------------------------------ answered routes
async def http_job(request: web.Request) -> web.Response:
    """An A1111 or workflow request, run on a worker by the same route; its answer, when ready."""
    body = await _json_body(request)
    jobs: Jobs = request.app[JOBS]
    payload = {"method": "POST", "path": request.rel_url.raw_path, "body": body}
    try:
        prompt_id, _ = await jobs.submit(keys.KIND_HTTP, payload, request_id=_request_id(request, {}),
                                         client_id=None, models=routing.models_of_a1111(body))
    except QueueFull as exc:
        return web.json_response({"error": "QueueFull", "detail": str(exc)}, status=503)
    except ValueError as exc:
        return web.json_response({"error": "ValueError", "detail": str(exc)}, status=400)

    def gone() -> bool:
        return request.transport is None or request.transport.is_closing()

    result = await jobs.wait(prompt_id, gone, request.app[SETTINGS].job_timeout)
    if result is None:
        state = await jobs.cancel(prompt_id)
        log.info("job %s: %s; cancelled (%s)", prompt_id, "client went away" if gone() else "timed out", state)
        return web.json_response({"error": "Timeout", "detail": f"job {prompt_id} took longer than "
                                  "DS_CLUSTER_JOB_TIMEOUT and was cancelled"}, status=504)
    if result.get("state") == "cancelled":
        return web.json_response({"error": "Cancelled", "detail": f"job {prompt_id} was cancelled"}, status=409)
    return web.json_response(result.get("body"), status=int(result.get("status", 200)),
                             headers={"X-DS-Prompt-Id": prompt_id, "X-DS-Worker": str(result.get("worker"))})


async def ready(request: web.Request) -> web.Response:
    r, settings = request.app[REDIS], request.app[SETTINGS]
    depth = await request.app[JOBS].depth()
    names = await r.hkeys(keys.WORKERS)
    beats = await r.mget([keys.alive(n) for n in names]) if names else []
    workers = [json.loads(b) for b in beats if b]
    ok = depth < settings.max_queue and bool(workers)
    body = {"ready": ok, "queue_depth": depth, "max_queue": settings.max_queue,
            "workers": [{k: w.get(k) for k in ("name", "busy", "job", "models")} for w in workers]}
    return web.json_response(body, status=200 if ok else 503)


# ------------------------------------------------------------------ the app
async def _start(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[REDIS] = aioredis.Redis.from_url(settings.redis_url, decode_responses=True, health_check_interval=10)
    celery = make_app(settings)
    app[JOBS] = Jobs(app[REDIS], celery, settings)
    app[HUB] = Hub(app[REDIS])
    app[HUB].start()
    app[HTTP] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
    app[WATCHDOG] = Watchdog(celery, settings)
    app[WATCHDOG].start()


async def _stop(app: web.Application) -> None:
    app[WATCHDOG].stop()
    await app[HUB].stop()
    await app[HTTP].close()
    await app[REDIS].aclose()


def create_app(settings: Settings | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[SETTINGS] = settings or Settings()
    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    app.router.add_post("/prompt", post_prompt)
    app.router.add_get("/prompt", get_prompt)
    app.router.add_get("/history", get_history_all)
    app.router.add_get("/history/{prompt_id}", get_history)
    app.router.add_get("/view", view)
    app.router.add_post("/upload/image", upload_image)
    app.router.add_post("/interrupt", interrupt)
    app.router.add_post("/queue", post_queue)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/ready", ready)
    for path in HTTP_JOB_ROUTES:
        app.router.add_post(path, http_job)
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Diffusers Studio cluster gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8190)
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--access-log", action="store_true", help="log every request (clients poll /history often)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings()
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    log.info("gateway on http://%s:%d, Redis %s", args.host, args.port, settings.redis_url)
    web.run_app(create_app(settings), host=args.host, port=args.port, print=None, handle_signals=True,
                access_log=logging.getLogger("aiohttp.access") if args.access_log else None)


if __name__ == "__main__":
    main(sys.argv[1:])
