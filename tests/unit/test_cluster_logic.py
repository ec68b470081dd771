"""The cluster's decisions that need no server: routing, rescue, image references, settings."""
from __future__ import annotations

import json

import pytest

from diffusers_studio.nodes.cluster import keys, routing
from diffusers_studio.nodes.cluster.config import Settings, WorkerSettings
from diffusers_studio.nodes.cluster.rescue import needs_rescue
from diffusers_studio.nodes.cluster.runner import _input_pictures, rewrite_image_refs


def _beat(name, models, busy=False):
    return json.dumps({"name": name, "models": models, "busy": busy})


def test_models_named_by_a_prompt_and_an_a1111_body():
    graph = {"1": {"class_type": "DSLoadModel", "inputs": {"model_name": "sub/a.safetensors"}},
             "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
             "3": {"class_type": "DSSampler", "inputs": {"model": ["1", 0]}}}
    assert routing.models_of_prompt(graph) == {"a.safetensors", "b.safetensors"}
    assert routing.models_of_a1111({"override_settings": {"sd_model_checkpoint": "m.safetensors [abc123]"}}) == \
        {"m.safetensors"}
    assert routing.models_of_a1111({"prompt": "x"}) == set()


def test_a_job_goes_to_an_idle_live_worker_holding_its_model_else_shared():
    beats = [_beat("w0", ["a.safetensors"], busy=True), None, _beat("w2", ["a.safetensors", "b.safetensors"])]
    assert routing.pick_worker({"a.safetensors"}, beats, [0, 0, 0]) == "w2"
    assert routing.pick_worker({"a.safetensors"}, beats, [0, 0, 1]) is None  # w2 has one waiting already
    assert routing.pick_worker({"c.safetensors"}, beats, [0, 0, 0]) is None
    assert routing.pick_worker(set(), beats, [0, 0, 0]) is None


def test_rescue_only_jobs_whose_worker_is_gone():
    settings = Settings()
    now = 1000.0
    running = {"state": "running", "worker": "w1", "started": str(now - 60)}
    assert needs_rescue(running, alive={"w0"}, now=now, settings=settings)
    assert needs_rescue(running, alive={"w0", "w1"}, now=now, settings=settings) is None
    waiting = {"state": "queued", "queue": keys.worker_queue("w1"), "created": str(now)}
    assert needs_rescue(waiting, alive={"w0"}, now=now, settings=settings)
    assert needs_rescue({**waiting, "queue": keys.SHARED_QUEUE}, alive=set(), now=now, settings=settings) is None
    unsent = {"state": "queued", "queue": "", "created": str(now - 60)}
    assert needs_rescue(unsent, alive=set(), now=now, settings=settings)
    assert needs_rescue({**unsent, "created": str(now)}, alive=set(), now=now, settings=settings) is None
    assert needs_rescue({"state": "done", "worker": "w1"}, alive=set(), now=now, settings=settings) is None


def test_image_references_name_the_worker_in_their_subfolder():
    outputs = {"7": {"images": [{"filename": "a.png", "subfolder": "x", "type": "output"},
                                {"filename": "b.png", "subfolder": "", "type": "temp"}], "text": ["hi"]}}
    out = rewrite_image_refs(outputs, "w3")
    assert [r["subfolder"] for r in out["7"]["images"]] == ["w3/x", "w3"]
    assert out["7"]["text"] == ["hi"] and outputs["7"]["images"][0]["subfolder"] == "x"


def test_input_pictures_are_plain_file_names_only():
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "cat.png"}},
             "2": {"class_type": "LoadImage", "inputs": {"image": "../etc/passwd"}},
             "3": {"class_type": "X", "inputs": {"image": ["1", 0]}}}
    assert _input_pictures(graph) == {"cat.png"}


def test_bad_settings_are_named(monkeypatch):
    with pytest.raises(ValueError, match="worker name 'gpu 0'"):
        WorkerSettings.from_env(name="gpu 0", comfy_url="http://127.0.0.1:8188")
    with pytest.raises(ValueError, match="--comfy-url='127.0.0.1:8188'"):
        WorkerSettings.from_env(name="gpu0", comfy_url="127.0.0.1:8188")
    monkeypatch.setenv("DS_CLUSTER_VISIBILITY_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="DS_CLUSTER_VISIBILITY_TIMEOUT='soon'"):
        Settings()
