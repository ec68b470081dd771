"""Redis key names and the job record, shared by the gateway and the workers.

A job is a hash `ds:job:<prompt_id>` holding what to run (`kind`, `payload`
as JSON) and where it stands (`state`: queued, running, done, error,
cancelled; `worker`, `queue`, `attempts`, `rescues`). The Celery message
carries only the prompt id, so any copy of it (a redelivery, a rescue) runs
the same job, and the result key `ds:result:<prompt_id>` is written once
(SET NX): whichever copy finishes first is the answer, the others read it.
"""
from __future__ import annotations

PREFIX = "ds:"
SHARED_QUEUE = "ds.shared"
EVENTS_CHANNEL = PREFIX + "events"
ACTIVE = PREFIX + "active"  # prompt ids not yet finished (the watchdog's list)
HISTORY = PREFIX + "history"  # prompt ids, newest first (GET /history)
WORKERS = PREFIX + "workers"  # worker names ever seen

# Job kinds: what the worker does with the payload.
KIND_PROMPT = "prompt"  # ComfyUI API graph, through the local /prompt
KIND_HTTP = "http"  # a pack route answered when the picture is ready (A1111, workflows)

FINAL_STATES = ("done", "error", "cancelled")


def job(prompt_id: str) -> str:
    return f"{PREFIX}job:{prompt_id}"


def result(prompt_id: str) -> str:
    return f"{PREFIX}result:{prompt_id}"


def request(request_id: str) -> str:
    return f"{PREFIX}req:{request_id}"


def alive(worker: str) -> str:
    """The worker's heartbeat: its URL and loaded models, expiring when it stops."""
    return f"{PREFIX}alive:{worker}"


def upload(name: str) -> str:
    """An input picture uploaded to the gateway, copied to a worker before its job."""
    return f"{PREFIX}upload:{name}"


def worker_queue(worker: str) -> str:
    """The worker's own queue: jobs routed to it because it holds their model."""
    return f"ds.w.{worker}"


# Claim a job for a worker, atomically. Returns what the worker should do:
# "done" (a result exists, or the job ended), "cancelled", "gone" (no record:
# expired), "busy" (another live worker runs it), "exhausted" (too many
# attempts), "run".
CLAIM_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'done' end
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'cancelled' then return 'cancelled' end
if state == 'done' or state == 'error' then return 'done' end
local holder = redis.call('HGET', KEYS[1], 'worker')
if state == 'running' and holder and holder ~= '' and holder ~= ARGV[1]
   and redis.call('EXISTS', ARGV[3] .. holder) == 1 then return 'busy' end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if attempts >= tonumber(ARGV[4]) then return 'exhausted' end
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', ARGV[1], 'started', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return 'run'
"""
