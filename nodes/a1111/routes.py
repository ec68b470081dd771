"""The /sdapi/v1 routes (aiohttp handlers on ComfyUI's PromptServer)."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import uuid
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from . import images, listings, openapi, options, queue, styles, translate
from ..http_guard import guarded
from ..input_files import store_input_file
from .errors import ApiError, pydantic_errors, validation_response
from .models import Img2ImgRequest, Txt2ImgRequest

log = logging.getLogger(__name__)

PREFIX = "/sdapi/v1"


_api = guarded(
    {ApiError: lambda exc: exc.response()},
    lambda exc: web.json_response({"error": type(exc).__name__, "detail": "", "body": "", "errors": str(exc)},
                                  status=500),
    log,
    "A1111 API",
)
"""Every answer in A1111's shapes; an unexpected failure is a 500 with its name, never a dropped connection."""


async def _json_body(request: web.Request) -> Any:
    text = await request.text()
    if not text.strip():
        raise _Invalid([{"loc": ["body"], "msg": "Field required", "type": "missing"}])
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _Invalid([{"loc": ["body", getattr(exc, "pos", 0)], "msg": f"JSON decode error: {exc}",
                         "type": "json_invalid"}]) from None


class _Invalid(Exception):
    def __init__(self, items):
        super().__init__("invalid body")
        self.items = items


# ---------------------------------------------------------------- catalogue
def _model_names() -> list[str]:
    from .. import comfy_bridge

    return comfy_bridge.model_names()


def _folder_list(folder: str) -> list[str]:
    import folder_paths

    try:
        return list(folder_paths.get_filename_list(folder))
    except KeyError:
        return []


def _store_image(png: bytes) -> str:
    return store_input_file(translate.content_name(png), png)


def _catalog() -> translate.Catalog:
    import nodes

    return translate.Catalog(
        models=_model_names(),
        upscale_models=_folder_list("upscale_models"),
        node_types=list(nodes.NODE_CLASS_MAPPINGS),
        store_image=_store_image,
        loras=_lora_names(),
        controlnets=_controlnet_names(),
        face_restorers=_face_restore_files(),
        face_detectors=_face_detector_files(),
        codeformer_available=_codeformer_available(),
        styles=styles.store.all(),
        model_family=_model_family,
    )


def _face_restore_files() -> list[str]:
    """What DSRestoreFaces offers from models/facerestore_models (the same listing, so a name sent on is valid)."""
    from .. import face_models

    face_models.register()
    return face_models.RESTORERS.files()


def _codeformer_available() -> bool:
    """Whether spandrel can load CodeFormer here (it lives in the optional spandrel_extra_arches)."""
    import importlib.util

    return importlib.util.find_spec("spandrel_extra_arches") is not None


def _face_detector_files() -> list[str]:
    """What DSRestoreFaces offers from models/facedetection."""
    from .. import face_models

    face_models.register()
    return face_models.DETECTORS.files()


def _folder_paths(folder: str) -> list[str]:
    import folder_paths

    try:
        return list(folder_paths.get_folder_paths(folder))
    except KeyError:
        return []


def _model_family(name: str):
    """The engine Family of a checkpoint by name, from its header alone; None when it cannot tell."""
    from .. import comfy_bridge
    from ..engine.loading import peek_family

    try:
        return peek_family(comfy_bridge.resolve_model_path(name))
    except (OSError, ValueError):
        return None


def _lora_names() -> list[str]:
    from ..lora import lora_names

    return list(lora_names())


def _controlnet_names() -> list[str]:
    from ..controlnet import controlnet_names

    return list(controlnet_names())


# ------------------------------------------------------------- generation
async def _generate(request: web.Request, kind: str, model_cls) -> web.Response:
    try:
        body = await _json_body(request)
        if isinstance(body, dict):
            body = translate.apply_infotext(body, model_cls)
        req = model_cls.model_validate(body)
    except _Invalid as exc:
        return validation_response(exc.items)
    except ValidationError as exc:
        return validation_response(pydantic_errors(exc))

    catalog = _catalog()
    opts = options.store.all()
    plan = await asyncio.to_thread(translate.build_plan, req, kind, opts, catalog)

    job_id = req.force_task_id or f"task({uuid.uuid4().hex[:15]})"
    while job_id in queue.JOBS:
        job_id = f"{job_id}-{uuid.uuid4().hex[:4]}"
    job = queue.Job(id=job_id, kind=kind)
    plan.info["job_timestamp"] = job.timestamp
    queue.JOBS[job.id] = job
    fmt = str(opts.get("samples_format") or "png")
    quality = int(opts.get("jpeg_quality") or 80)
    with_info = opts.get("enable_pnginfo", True)
    encoded: list[str] = []
    try:
        try:
            for graph, steps in zip(plan.graphs, plan.sampler_steps):
                await queue.submit(job, graph, steps)
        except Exception:
            queue.cancel_pending(job)
            raise
        for index, prompt_id in enumerate(list(job.prompt_ids)):
            entry = await queue.wait(job, prompt_id)
            result = queue.outcome(entry)
            if result == "error":
                queue.cancel_pending(job)
                raise queue.execution_error(entry)
            if result != "success":
                continue  # interrupted or skipped: the images made so far are the answer
            if not (req.send_images or plan.save):
                continue
            paths = queue.image_paths(entry, plan.output_node)
            for j, path in enumerate(paths):
                number = index * plan.samples_per_graph + j
                text = plan.infotexts[number] if number < len(plan.infotexts) else None
                data = await asyncio.to_thread(
                    images.read_and_tag, path, text if with_info else None, plan.save, fmt, quality
                )
                if req.send_images:
                    encoded.append(data)
    except asyncio.CancelledError:
        queue.cancel_pending(job)
        raise
    finally:
        queue.JOBS.pop(job.id, None)

    parameters = req.model_dump()
    if kind == "img2img" and not req.include_init_images:
        parameters["init_images"] = None
        parameters["mask"] = None
    return web.json_response({"images": encoded, "parameters": parameters, "info": json.dumps(plan.info)})


@_api
async def txt2img(request: web.Request) -> web.Response:
    return await _generate(request, "txt2img", Txt2ImgRequest)


@_api
async def img2img(request: web.Request) -> web.Response:
    return await _generate(request, "img2img", Img2ImgRequest)


# ------------------------------------------------------------------ options
def _current_options() -> dict:
    values = options.store.all()
    models = _model_names()
    if values.get("sd_model_checkpoint") not in models:
        values["sd_model_checkpoint"] = models[0] if models else None
    return values


@_api
async def get_options(request: web.Request) -> web.Response:
    return web.json_response(_current_options())


@_api
async def set_options(request: web.Request) -> web.Response:
    try:
        body = await _json_body(request)
    except _Invalid as exc:
        return validation_response(exc.items)
    if not isinstance(body, dict):
        return validation_response([{"loc": ["body"], "msg": "Input should be a valid dictionary",
                                     "type": "dict_type"}])
    changes = dict(body)
    if "sd_model_checkpoint" in changes and changes["sd_model_checkpoint"] is not None:
        changes["sd_model_checkpoint"] = translate.resolve_model(changes["sd_model_checkpoint"], _model_names())
    if changes.get("sd_vae") not in (None, "Automatic", "None"):
        raise ApiError(404, f"VAE not found: {changes['sd_vae']!r}; available: Automatic, None")
    try:
        await asyncio.to_thread(options.store.update, changes)
    except options.OptionError as exc:
        raise ApiError(422, str(exc), body={"option": exc.key}) from None
    return web.json_response(None)


# ---------------------------------------------------------------- listings
@_api
async def sd_models(request: web.Request) -> web.Response:
    return web.json_response([
        {"title": name, "model_name": translate.model_stem(name), "hash": None, "sha256": None,
         "filename": name, "config": None}
        for name in _model_names()
    ])


@_api
async def sd_vae(request: web.Request) -> web.Response:
    # The pack decodes with each model's own VAE (sd_vae "Automatic"); it has
    # no separate VAE loader, so no file can be chosen here.
    return web.json_response([])


@_api
async def samplers(request: web.Request) -> web.Response:
    from ..engine.schedulers import SAMPLER_NAMES, sampler_note

    return web.json_response([
        {"name": name, "aliases": translate.A1111_SAMPLER_IDS.get(name, []),
         "options": {"note": sampler_note(name)} if sampler_note(name) else {}}
        for name in SAMPLER_NAMES
    ])


@_api
async def schedulers(request: web.Request) -> web.Response:
    from ..engine.schedulers import A1111_SCHEDULE_LABELS

    return web.json_response([
        {"name": label.lower().replace(" ", "_"), "label": label, "aliases": None, "default_rho": -1,
         "need_inner_model": False}
        for label in A1111_SCHEDULE_LABELS
    ])


@_api
async def upscalers(request: web.Request) -> web.Response:
    items = [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4 if name != "None" else 1}
             for name in translate.IMAGE_UPSCALERS]
    items += [{"name": name, "model_name": translate.model_stem(name), "model_path": name, "model_url": None,
               "scale": 4} for name in _folder_list("upscale_models")]
    return web.json_response(items)


@_api
async def latent_upscale_modes(request: web.Request) -> web.Response:
    return web.json_response([{"name": name} for name in translate.LATENT_UPSCALERS])


@_api
async def loras(request: web.Request) -> web.Response:
    out = []
    for name in _lora_names():
        stem = translate.model_stem(name)
        out.append({"name": stem, "alias": stem, "path": name, "metadata": {}})
    return web.json_response(out)


@_api
async def face_restorers(request: web.Request) -> web.Response:
    return web.json_response(listings.face_restorers(_face_restore_files()))


@_api
async def realesrgan_models(request: web.Request) -> web.Response:
    return web.json_response(listings.realesrgan_models(_folder_list("upscale_models")))


@_api
async def prompt_styles(request: web.Request) -> web.Response:
    return web.json_response([{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                              for s in styles.store.all().values()])


@_api
async def embeddings(request: web.Request) -> web.Response:
    from ..embedding_files import a1111_listing

    return web.json_response(await asyncio.to_thread(a1111_listing))


@_api
async def hypernetworks(request: web.Request) -> web.Response:
    return web.json_response([])  # the pack does not load hypernetworks


@_api
async def cmd_flags(request: web.Request) -> web.Response:
    from comfy.cli_args import args

    _face_restore_files()  # registers the folder, so its path is listed
    return web.json_response(listings.cmd_flags(args, _folder_paths))


@_api
async def controlnet_model_list(request: web.Request) -> web.Response:
    return web.json_response({"model_list": _controlnet_names()})


@_api
async def refresh(request: web.Request) -> web.Response:
    return web.json_response(None)  # listings are read live from ComfyUI's folders


# ------------------------------------------------------- progress / control
@_api
async def progress(request: web.Request) -> web.Response:
    skip_image = request.query.get("skip_current_image", "false").lower() in ("1", "true", "yes")
    job = queue.current_job()
    answer = queue.progress_of(job)
    answer["current_image"] = None
    answer["textinfo"] = None
    answer["current_task"] = job.id if job else None
    if job is not None and job.preview is not None and not skip_image:
        out = io.BytesIO()
        job.preview.save(out, format="PNG")
        answer["current_image"] = base64.b64encode(out.getvalue()).decode("ascii")
    return web.json_response(answer)


@_api
async def interrupt(request: web.Request) -> web.Response:
    queue.interrupt()
    return web.json_response({})


@_api
async def skip(request: web.Request) -> web.Response:
    queue.skip()
    return web.json_response(None)


@_api
async def openapi_document(request: web.Request) -> web.Response:
    return web.json_response(openapi.document())


ROUTES = [
    ("POST", f"{PREFIX}/txt2img", txt2img),
    ("POST", f"{PREFIX}/img2img", img2img),
    ("GET", f"{PREFIX}/options", get_options),
    ("POST", f"{PREFIX}/options", set_options),
    ("GET", f"{PREFIX}/sd-models", sd_models),
    ("GET", f"{PREFIX}/sd-vae", sd_vae),
    ("GET", f"{PREFIX}/samplers", samplers),
    ("GET", f"{PREFIX}/schedulers", schedulers),
    ("GET", f"{PREFIX}/upscalers", upscalers),
    ("GET", f"{PREFIX}/latent-upscale-modes", latent_upscale_modes),
    ("GET", f"{PREFIX}/loras", loras),
    ("GET", f"{PREFIX}/face-restorers", face_restorers),
    ("GET", f"{PREFIX}/realesrgan-models", realesrgan_models),
    ("GET", f"{PREFIX}/hypernetworks", hypernetworks),
    ("GET", f"{PREFIX}/prompt-styles", prompt_styles),
    ("GET", f"{PREFIX}/embeddings", embeddings),
    ("GET", f"{PREFIX}/cmd-flags", cmd_flags),
    ("GET", "/controlnet/model_list", controlnet_model_list),
    ("POST", f"{PREFIX}/refresh-checkpoints", refresh),
    ("POST", f"{PREFIX}/refresh-vae", refresh),
    ("POST", f"{PREFIX}/refresh-loras", refresh),
    ("GET", f"{PREFIX}/progress", progress),
    ("POST", f"{PREFIX}/interrupt", interrupt),
    ("POST", f"{PREFIX}/skip", skip),
    ("GET", "/sdapi/docs/openapi.json", openapi_document),
]


def register(routes: web.RouteTableDef) -> None:
    """Add the A1111 routes to ComfyUI's route table."""
    for method, path, handler in ROUTES:
        routes.route(method, path)(handler)
