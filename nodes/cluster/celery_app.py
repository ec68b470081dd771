"""The Celery application shared by the gateway (which sends) and the workers.

Settings that make a job survive a dying worker:

- `task_acks_late`: a message is acknowledged when the job is over, not when
  it starts, so a worker killed mid-job leaves it unacknowledged in Redis and
  the broker hands it out again after the visibility timeout;
- `task_reject_on_worker_lost`: the same when a pool child dies (prefork);
- `worker_prefetch_multiplier = 1` with the solo pool (the worker's CLI sets
  it): a worker holds only the job it runs, so a dead worker strands at most
  one job and nothing waits behind a busy worker while another is free;
- `broker_transport_options.visibility_timeout`: sized above the longest job
  (config.py).

Task routing is by explicit queue names (the shared queue and one per worker);
the task is named, so gateway and workers need not import each other's code.
"""
from __future__ import annotations

from celery import Celery

from . import keys
from .config import Settings

TASK_NAME = "ds.run_job"


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    app = Celery("diffusers_studio_cluster", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",
        task_default_queue=keys.SHARED_QUEUE,
        task_create_missing_queues=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=int(settings.result_ttl),
        task_track_started=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": settings.restore_interval,
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"retry_policy": {"max_retries": 30, "interval_start": 0.2,
                                                           "interval_step": 0.5, "interval_max": 2}},
    )
    return app
