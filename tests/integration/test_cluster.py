"""The scale-out cluster end to end: Redis, two real ComfyUI workers, the gateway.

Everything runs on loopback: a private redis-server (append-only file, free
port, temporary folder), two ComfyUI servers with the pack and tiny SD1.5
models, a Celery worker beside each, the gateway. The tests run in file order
on one cluster, the destructive ones last (a Celery worker killed, Redis
killed and restarted, a ComfyUI killed). Every process is stopped at the end,
whatever failed.
"""
from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import websocket
from PIL import Image

from harness import cluster as cluster_harness
from harness import prompts
from harness.models import SD15_CHECKPOINT, SD15_DIFFUSERS

pytestmark = pytest.mark.integration

WAIT_S = 240  # bound of every wait; a healthy run needs a fraction of it


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        running = cluster_harness.start_cluster(tmp_path_factory.mktemp("cluster"), n_workers=2)
    except FileNotFoundError as exc:  # no redis-server: make test installs it (scripts/ensure_redis.sh)
        pytest.skip(str(exc))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def gw(cluster):
    """The cluster (its processes' logs stay in the module's temporary folder)."""
    return cluster


# ------------------------------------------------------------------ helpers
def post_prompt(gw, graph, client_id=None, request_id=None) -> str:
    body = {"prompt": graph}
    if client_id:
        body["client_id"] = client_id
    if request_id:
        body["request_id"] = request_id
    response = requests.post(gw.url + "/prompt", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


def wait_history(gw, prompt_id, timeout=WAIT_S) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = requests.get(f"{gw.url}/history/{prompt_id}", timeout=30).json()
        if entry:
            return entry[prompt_id]
        time.sleep(0.2)
    raise AssertionError(f"no history for {prompt_id} after {timeout} s\n{gw.logs()}")


def view_pixels(gw, ref) -> np.ndarray:
    response = requests.get(gw.url + "/view", params=ref, timeout=30)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.int16)


def b64_pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=np.int16)


def prompt_images(gw, entry) -> list[np.ndarray]:
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:3000]
    refs = [ref for out in entry["outputs"].values() for ref in out.get("images", [])]
    return [view_pixels(gw, ref) for ref in refs]


def txt2img(gw, seed, steps=2, request_id=None, timeout=WAIT_S, **fields):
    body = {"prompt": "a red apple", "negative_prompt": "blurry", "steps": steps, "width": 64, "height": 64,
            "sampler_name": "Euler a", "seed": seed, "override_settings": {"sd_model_checkpoint": SD15_CHECKPOINT}}
    body.update(fields)
    headers = {"X-Request-Id": request_id} if request_id else {}
    return requests.post(gw.url + "/sdapi/v1/txt2img", json=body, headers=headers, timeout=timeout)


def run_workflow(gw, seed):
    inputs = {"Positive prompt": "a lighthouse", "Sampler": seed}
    return requests.post(f"{gw.url}/ds/workflows/{cluster_harness.TEST_WORKFLOW}/run", json={"inputs": inputs},
                         timeout=WAIT_S)


def job_record(gw, prompt_id) -> dict:
    return gw.redis_client().hgetall(f"ds:job:{prompt_id}")


def wait_idle(gw, timeout=WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = requests.get(gw.url + "/ready", timeout=30).json()
        if body["queue_depth"] == 0 and not any(w["busy"] for w in body["workers"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"the cluster did not drain in {timeout} s\n{gw.logs()}")


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """One seed's picture, possibly from two workers: equal up to float rounding (measured: at
    most 1 level in 255); two seeds' pictures differ everywhere (measured: 40+ on average)."""
    assert a.shape == b.shape
    difference = np.abs(a - b)
    if int(difference.max()) <= 2:
        return True
    assert float(difference.mean()) > 5, f"neither the same picture nor another: {float(difference.mean()):.2f}"
    return False


class WsWatcher:
    """A client on the gateway's /ws, reading in a thread (answering pings, as a browser does)."""

    def __init__(self, gw, client_id):
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{gw.gateway_port}/ws?clientId={client_id}", timeout=30)
        self.messages: list[dict] = []
        self.binary = 0
        self.error = None
        self._seen = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        self.ws.settimeout(None)
        try:
            while True:
                frame = self.ws.recv()
                with self._seen:
                    if isinstance(frame, bytes):
                        self.binary += 1
                    elif frame:
                        self.messages.append(json.loads(frame))
                    else:
                        return
                    self._seen.notify_all()
        except (OSError, websocket.WebSocketException) as exc:
            with self._seen:
                self.error = exc
                self._seen.notify_all()

    def until(self, predicate, timeout=WAIT_S) -> dict:
        deadline = time.monotonic() + timeout
        checked = 0
        with self._seen:
            while True:
                for message in self.messages[checked:]:
                    if predicate(message):
                        return message
                checked = len(self.messages)
                remaining = deadline - time.monotonic()
                if self.error is not None or remaining <= 0:
                    raise AssertionError(f"not seen on /ws within {timeout} s (error: {self.error}); "
                                         f"saw {[m.get('type') for m in self.messages]}")
                self._seen.wait(min(remaining, 1.0))

    def close(self):
        try:
            self.ws.close(timeout=2)
        except (OSError, websocket.WebSocketException):
            pass
        self._thread.join(timeout=5)


def is_end(prompt_id):
    return lambda m: m.get("type") == "executing" and m["data"].get("node") is None \
        and m["data"].get("prompt_id") == prompt_id


def is_progress(prompt_id):
    return lambda m: m.get("type") == "progress" and m["data"].get("prompt_id") == prompt_id


# -------------------------------------------------------------------- tests
def test_twenty_mixed_requests_each_get_their_own_seed(gw):
    """/prompt, A1111 txt2img and workflow runs at once: every answer made with its own seed."""
    client_id = uuid.uuid4().hex
    watcher = WsWatcher(gw, client_id)
    try:
        def prompt_job(seed, with_ws):
            pid = post_prompt(gw, prompts.txt2img(seed=seed, steps=2, prefix="mixed/p"),
                              client_id=client_id if with_ws else None)
            entry = wait_history(gw, pid)
            return pid, entry["ds_cluster"]["worker"], prompt_images(gw, entry)

        def a1111_job(seed):
            response = txt2img(gw, seed)
            assert response.status_code == 200, response.text[:2000]
            return None, response.headers["X-DS-Worker"], [b64_pixels(x) for x in response.json()["images"]]

        def workflow_job(seed):
            response = run_workflow(gw, seed)
            assert response.status_code == 200, response.text[:2000]
            return None, response.headers["X-DS-Worker"], [b64_pixels(x) for x in response.json()["images"]]

        # The /ws-watched prompt (index 0) has a seed no other request uses: had it a twin, the twin
        # could run first on the same worker and ComfyUI would answer it from cache, with no progress.
        plan = [("prompt", s) for s in (99, 2, 3, 4, 1, 2, 3, 4)] + [("a1111", s) for s in (10, 11, 12, 13, 10, 11, 12, 13)] \
            + [("workflow", s) for s in (20, 21, 20, 21)]
        with ThreadPoolExecutor(len(plan)) as pool:
            futures = []
            for index, (kind, seed) in enumerate(plan):
                if kind == "prompt":
                    futures.append(pool.submit(prompt_job, seed, index == 0))
                elif kind == "a1111":
                    futures.append(pool.submit(a1111_job, seed))
                else:
                    futures.append(pool.submit(workflow_job, seed))
            results = [f.result() for f in futures]
        ws_prompt = results[0][0]
        watcher.until(is_end(ws_prompt), timeout=30)
    finally:
        watcher.close()

    assert len(results) == 20
    # Same kind and seed: the same picture, whichever worker drew it; another seed: another picture.
    for i, ((kind_a, seed_a), (_, _, images_a)) in enumerate(zip(plan, results)):
        assert len(images_a) == 1, (kind_a, seed_a, len(images_a))
        for (kind_b, seed_b), (_, _, images_b) in list(zip(plan, results))[i + 1:]:
            if kind_b == kind_a:
                assert same(images_a[0], images_b[0]) == (seed_a == seed_b), (kind_a, seed_a, seed_b)
    assert {worker for _, worker, _ in results} == {"w0", "w1"}, "both workers should have served"
    # The /ws client saw its prompt's progress under the gateway's prompt id, ending as ComfyUI ends.
    kinds = [m["type"] for m in watcher.messages if m.get("data", {}).get("prompt_id") == ws_prompt]
    assert "execution_start" in kinds and "progress" in kinds and kinds[-1] == "executing", kinds
    history = requests.get(gw.url + "/history", timeout=30).json()
    assert ws_prompt in history


def test_resubmission_with_a_request_id_runs_once(gw):
    request_id = f"req-{uuid.uuid4().hex}"
    graph = prompts.txt2img(seed=31, steps=2, prefix="idem/p")
    first = post_prompt(gw, graph, request_id=request_id)
    assert post_prompt(gw, graph, request_id=request_id) == first
    entry = wait_history(gw, first)
    assert post_prompt(gw, graph, request_id=request_id) == first  # after it finished, too
    assert wait_history(gw, first) == entry
    assert job_record(gw, first)["attempts"] == "1"

    # The answered routes: two submissions at once, one run, the same pictures.
    a1111_id = f"req-{uuid.uuid4().hex}"
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: txt2img(gw, 32, request_id=a1111_id), range(2)))
    assert [a.status_code for a in answers] == [200, 200], answers[0].text[:2000]
    assert answers[0].headers["X-DS-Prompt-Id"] == answers[1].headers["X-DS-Prompt-Id"]
    assert answers[0].json()["images"] == answers[1].json()["images"]
    assert job_record(gw, answers[0].headers["X-DS-Prompt-Id"])["attempts"] == "1"


def test_poisoned_prompt_fails_fast_and_is_not_retried(gw):
    graph = prompts.txt2img(model="no-such-model.safetensors", seed=1, steps=2)
    prompt_id = post_prompt(gw, graph)
    entry = wait_history(gw, prompt_id, timeout=60)
    assert entry["status"]["status_str"] == "error"
    [(kind, details)] = entry["status"]["messages"]
    assert kind == "execution_error" and details["http_status"] == 400
    assert "no-such-model.safetensors" in json.dumps(details["node_errors"])
    assert job_record(gw, prompt_id)["attempts"] == "1"

    response = txt2img(gw, 1, override_settings={"sd_model_checkpoint": "no-such-model.safetensors"}, timeout=60)
    assert 400 <= response.status_code < 500, response.text[:2000]
    assert "no-such-model" in response.text
    assert job_record(gw, response.headers["X-DS-Prompt-Id"])["attempts"] == "1"
    wait_idle(gw)


def test_jobs_go_to_the_worker_holding_their_model(gw):
    wait_idle(gw)
    ready = requests.get(gw.url + "/ready", timeout=30).json()
    assert not any(SD15_DIFFUSERS in w["models"] for w in ready["workers"]), ready
    graph = prompts.txt2img(model=SD15_DIFFUSERS, seed=41, steps=2, prefix="route/p")
    first = wait_history(gw, post_prompt(gw, graph))["ds_cluster"]["worker"]
    r = gw.redis_client()
    deadline = time.monotonic() + 30
    while SD15_DIFFUSERS not in json.loads(r.get(f"ds:alive:{first}") or "{}").get("models", []):
        assert time.monotonic() < deadline, "the worker's heartbeat never listed the model it loaded"
        time.sleep(0.1)
    for seed in (42, 43, 44):
        prompt_id = post_prompt(gw, prompts.txt2img(model=SD15_DIFFUSERS, seed=seed, steps=2, prefix="route/p"))
        assert wait_history(gw, prompt_id)["ds_cluster"]["worker"] == first
        assert job_record(gw, prompt_id)["queue"] == f"ds.w.{first}"


def test_client_that_disconnects_leaves_no_orphan(gw):
    wait_idle(gw)
    request_id = f"gone-{uuid.uuid4().hex}"
    with pytest.raises(requests.Timeout):
        txt2img(gw, 51, steps=150, width=128, height=128, request_id=request_id, timeout=3)
    r = gw.redis_client()
    prompt_id = r.get(f"ds:req:{request_id}")
    deadline = time.monotonic() + 60
    while r.hget(f"ds:job:{prompt_id}", "state") != "cancelled":
        assert time.monotonic() < deadline, job_record(gw, prompt_id)
        time.sleep(0.1)
    wait_idle(gw, timeout=60)
    for worker in gw.workers:  # nothing left queued or running on either ComfyUI
        queue = requests.get(worker.comfy.url + "/queue", timeout=30).json()
        assert queue["queue_running"] == [] and queue["queue_pending"] == [], (worker.name, queue)
    result = r.get(f"ds:result:{prompt_id}")
    assert result is None or json.loads(result)["state"] == "cancelled"


def _kill_mid_run(gw, kill, steps=20):
    """Queue a prompt, wait for its first progress on /ws, `kill(worker)` the worker running it."""
    client_id = uuid.uuid4().hex
    watcher = WsWatcher(gw, client_id)
    try:
        prompt_id = post_prompt(gw, prompts.txt2img(seed=61, steps=steps, prefix="kill/p"),
                                client_id=client_id)
        watcher.until(is_progress(prompt_id))
        victim_name = job_record(gw, prompt_id)["worker"]
        victim = next(w for w in gw.workers if w.name == victim_name)
        finished_before = gw.redis_client().exists(f"ds:result:{prompt_id}")
        kill(victim)
        assert not finished_before, "the job finished before the kill; make it longer"
        watcher.until(is_end(prompt_id))
    finally:
        watcher.close()
    return prompt_id, victim


def test_celery_worker_killed_mid_run_loses_nothing(gw):
    wait_idle(gw)
    # More jobs queued behind the one that dies: all must come back, each once.
    others = []
    prompt_id, victim = _kill_mid_run(gw, lambda w: (w.celery.kill(), others.extend(
        post_prompt(gw, prompts.txt2img(seed=70 + i, steps=2, prefix="kill/q")) for i in range(3))))
    entry = wait_history(gw, prompt_id)
    assert entry["ds_cluster"]["worker"] != victim.name
    assert len(prompt_images(gw, entry)) == 1
    for pid in others:
        assert len(prompt_images(gw, wait_history(gw, pid))) == 1
    record = job_record(gw, prompt_id)
    assert record["attempts"] == "2" and int(record["rescues"]) >= 1, record
    history = requests.get(gw.url + "/history", timeout=30).json()
    assert list(history).count(prompt_id) == 1

    # The worker comes back: it clears what its last life left on its ComfyUI.
    victim.celery.stop()
    gw.start_celery(victim)
    gw.wait_workers_alive([victim.name])
    queue = requests.get(victim.comfy.url + "/queue", timeout=30).json()
    assert queue["queue_running"] == [] and queue["queue_pending"] == [], queue


def test_redis_restart_loses_no_acknowledged_job(gw):
    wait_idle(gw)
    ids = [post_prompt(gw, prompts.txt2img(seed=80 + i, steps=2, prefix="redis/p")) for i in range(4)]
    gw.redis.kill()  # SIGKILL: only what the append-only file holds survives
    gw.redis.process.wait(timeout=30)
    gw.start_redis()
    seeds = {}
    for i, prompt_id in enumerate(ids):
        images = prompt_images(gw, wait_history(gw, prompt_id))
        assert len(images) == 1
        seeds[i] = images[0]
    assert not same(seeds[0], seeds[1])
    gw.wait_workers_alive([w.name for w in gw.workers])


def test_comfyui_killed_mid_run_hands_the_job_on(gw):
    wait_idle(gw)
    prompt_id, victim = _kill_mid_run(gw, lambda w: w.comfy.process.kill())
    entry = wait_history(gw, prompt_id)
    assert entry["ds_cluster"]["worker"] != victim.name
    assert len(prompt_images(gw, entry)) == 1
    # Its Celery worker left rather than take jobs for a dead ComfyUI.
    victim.celery.process.wait(timeout=60)
    ready = requests.get(gw.url + "/ready", timeout=30).json()
    assert victim.name not in {w["name"] for w in ready["workers"]}
