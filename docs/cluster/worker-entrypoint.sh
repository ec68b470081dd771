#!/usr/bin/env bash
# A ComfyUI and its Celery worker in one container (one per GPU). When either
# exits, the container exits and Docker's restart policy starts both afresh:
# a worker never outlives its ComfyUI (docs/scale-out.md).
set -euo pipefail
python /opt/ComfyUI/main.py --listen 0.0.0.0 --port 8188 --disable-auto-launch &
comfy=$!
python -m nodes.cluster.worker --name "${DS_CLUSTER_WORKER_NAME:?set DS_CLUSTER_WORKER_NAME, e.g. gpu0}" \
  --comfy-url http://127.0.0.1:8188 --public-url "${DS_CLUSTER_COMFY_PUBLIC_URL:-http://$(hostname):8188}" &
worker=$!
trap 'kill -TERM $comfy $worker 2>/dev/null; wait' TERM INT
wait -n $comfy $worker
kill -TERM $comfy $worker 2>/dev/null || true
wait || true
exit 1
