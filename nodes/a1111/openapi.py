"""The OpenAPI 3.1 document of the /sdapi/v1 routes (GET /sdapi/docs/openapi.json)."""
from __future__ import annotations

import functools
from typing import Any

from . import models

_SCHEMAS = {
    "StableDiffusionTxt2ImgProcessingAPI": models.Txt2ImgRequest,
    "StableDiffusionImg2ImgProcessingAPI": models.Img2ImgRequest,
    "TextToImageResponse": models.GenerationResponse,
    "ProgressResponse": models.ProgressResponse,
    "SamplerItem": models.SamplerItem,
    "SchedulerItem": models.SchedulerItem,
    "UpscalerItem": models.UpscalerItem,
    "LatentUpscalerModeItem": models.LatentUpscaleModeItem,
    "SDModelItem": models.SDModelItem,
    "SDVaeItem": models.SDVaeItem,
    "LoraItem": models.LoraItem,
    "ErrorResponse": models.ErrorResponse,
    "HTTPValidationError": models.ValidationErrorResponse,
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _responses(ok: dict, with_body: bool = False) -> dict:
    out = {"200": {"description": "Successful Response", "content": {"application/json": {"schema": ok}}},
           "404": {"description": "Not found", "content": {"application/json": {"schema": _ref("ErrorResponse")}}}}
    if with_body:
        out["422"] = {"description": "Validation Error",
                      "content": {"application/json": {"schema": _ref("HTTPValidationError")}}}
        out["500"] = {"description": "The run failed",
                      "content": {"application/json": {"schema": _ref("ErrorResponse")}}}
    return out


def _list_of(name: str) -> dict:
    return {"type": "array", "items": _ref(name)}


_LISTINGS = [
    ("/sdapi/v1/face-restorers", "Face restorers (models/facerestore_models)", "get_face_restorers"),
    ("/sdapi/v1/realesrgan-models", "Real-ESRGAN models (models/upscale_models)", "get_realesrgan_models"),
    ("/sdapi/v1/hypernetworks", "Hypernetworks (not supported: always empty)", "get_hypernetworks"),
    ("/sdapi/v1/prompt-styles", "Prompt styles (styles.csv in ComfyUI's user folder)", "get_prompt_styles"),
]


@functools.lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for name, model in _SCHEMAS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schema["title"] = name
        schemas[name] = schema

    def body(name: str) -> dict:
        return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}

    paths = {
        "/sdapi/v1/txt2img": {"post": {"summary": "Text to image", "operationId": "text2imgapi",
                                       "requestBody": body("StableDiffusionTxt2ImgProcessingAPI"),
                                       "responses": _responses(_ref("TextToImageResponse"), True)}},
        "/sdapi/v1/img2img": {"post": {"summary": "Image to image", "operationId": "img2imgapi",
                                       "requestBody": body("StableDiffusionImg2ImgProcessingAPI"),
                                       "responses": _responses(_ref("TextToImageResponse"), True)}},
        "/sdapi/v1/options": {
            "get": {"summary": "Get settings", "operationId": "get_config",
                    "responses": _responses({"type": "object", "additionalProperties": True})},
            "post": {"summary": "Set settings (persisted)", "operationId": "set_config",
                     "requestBody": {"required": True, "content": {"application/json": {
                         "schema": {"type": "object", "additionalProperties": True}}}},
                     "responses": _responses({}, True)},
        },
        "/sdapi/v1/progress": {"get": {
            "summary": "Progress of the running A1111 job", "operationId": "progressapi",
            "parameters": [{"name": "skip_current_image", "in": "query", "required": False,
                            "schema": {"type": "boolean", "default": False}}],
            "responses": _responses(_ref("ProgressResponse"))}},
        "/sdapi/v1/interrupt": {"post": {"summary": "Interrupt the running job", "operationId": "interruptapi",
                                         "responses": _responses({})}},
        "/sdapi/v1/skip": {"post": {"summary": "Skip the running batch", "operationId": "skip",
                                    "responses": _responses({})}},
        "/sdapi/v1/sd-models": {"get": {"summary": "Checkpoints", "operationId": "get_sd_models",
                                        "responses": _responses(_list_of("SDModelItem"))}},
        "/sdapi/v1/sd-vae": {"get": {"summary": "VAEs", "operationId": "get_sd_vaes",
                                     "responses": _responses(_list_of("SDVaeItem"))}},
        "/sdapi/v1/samplers": {"get": {"summary": "Samplers", "operationId": "get_samplers",
                                       "responses": _responses(_list_of("SamplerItem"))}},
        "/sdapi/v1/schedulers": {"get": {"summary": "Schedule types", "operationId": "get_schedulers",
                                         "responses": _responses(_list_of("SchedulerItem"))}},
        "/sdapi/v1/upscalers": {"get": {"summary": "Image upscalers", "operationId": "get_upscalers",
                                        "responses": _responses(_list_of("UpscalerItem"))}},
        "/sdapi/v1/latent-upscale-modes": {"get": {"summary": "Latent upscale modes",
                                                   "operationId": "get_latent_upscale_modes",
                                                   "responses": _responses(_list_of("LatentUpscalerModeItem"))}},
        "/sdapi/v1/loras": {"get": {"summary": "LoRAs", "operationId": "get_loras",
                                    "responses": _responses(_list_of("LoraItem"))}},
        "/controlnet/model_list": {"get": {
            "summary": "ControlNet models (sd-webui-controlnet's listing, from models/controlnet)",
            "operationId": "controlnet_model_list",
            "responses": _responses({"type": "object", "properties": {
                "model_list": {"type": "array", "items": {"type": "string"}}}})}},
        **{path: {"get": {"summary": summary, "operationId": op,
                          "responses": _responses({"type": "array", "items": {}})}}
           for path, summary, op in _LISTINGS},
        "/sdapi/v1/embeddings": {"get": {"summary": "Textual-inversion embeddings (models/embeddings)",
                                         "operationId": "get_embeddings",
                                         "responses": _responses({"type": "object", "properties": {
                                             "loaded": {"type": "object"}, "skipped": {"type": "object"}}})}},
        "/sdapi/v1/cmd-flags": {"get": {"summary": "Command-line flags (A1111's names, for this server)",
                                        "operationId": "get_cmd_flags",
                                        "responses": _responses({"type": "object", "additionalProperties": True})}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Diffusers Studio: AUTOMATIC1111-compatible API", "version": "1.0.0",
                 "description": "A1111's /sdapi/v1 routes served by ComfyUI; each request runs as a ComfyUI prompt."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
