"""Which queue a job goes to: a worker that has its model loaded, else the shared one.

Loading a checkpoint costs seconds to minutes, so a job whose model already
sits in some worker's memory goes to that worker's own queue, but only when
that worker is alive and idle right now (its heartbeat says so and its own
queue is empty): a job never waits behind another one for the sake of a warm
model while a cold worker is free. Everything else takes the shared queue,
which every worker consumes.
"""
from __future__ import annotations

import json
from typing import Optional

from . import keys

MODEL_INPUTS = ("model_name", "ckpt_name")


def models_of_prompt(graph: dict) -> set[str]:
    names = set()
    for node in graph.values():
        inputs = node.get("inputs", {}) if isinstance(node, dict) else {}
        for key in MODEL_INPUTS:
            value = inputs.get(key) if isinstance(inputs, dict) else None
            if isinstance(value, str) and value:
                names.add(value.replace("\\", "/").rsplit("/", 1)[-1])
    return names


def models_of_a1111(body: dict) -> set[str]:
    settings = body.get("override_settings") if isinstance(body, dict) else None
    name = settings.get("sd_model_checkpoint") if isinstance(settings, dict) else None
    if isinstance(name, str) and name:
        return {name.split(" [", 1)[0].replace("\\", "/").rsplit("/", 1)[-1]}
    return set()


def pick_worker(wanted: set[str], heartbeats: list[Optional[str]], queue_lengths: list[int]) -> Optional[str]:
    """The idle live worker holding every wanted model (heartbeats: the alive keys' JSON)."""
    if not wanted:
        return None
    for raw, waiting in zip(heartbeats, queue_lengths):
        if raw is None or waiting:
            continue
        beat = json.loads(raw)
        if not beat.get("busy") and wanted <= set(beat.get("models", [])):
            return beat["name"]
    return None


async def choose_queue(r, wanted: set[str]) -> str:
    """`r` is an asyncio Redis client."""
    if not wanted:
        return keys.SHARED_QUEUE
    names = await r.hkeys(keys.WORKERS)
    if not names:
        return keys.SHARED_QUEUE
    pipe = r.pipeline()
    for name in names:
        pipe.get(keys.alive(name))
    for name in names:
        pipe.llen(keys.worker_queue(name))
    answers = await pipe.execute()
    chosen = pick_worker(wanted, answers[:len(names)], answers[len(names):])
    return keys.worker_queue(chosen) if chosen else keys.SHARED_QUEUE
