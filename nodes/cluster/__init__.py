"""Scale-out: many ComfyUI servers behind one address, on Celery with Redis.

This package is a deployment tool, not part of the node pack: ComfyUI never
imports it, and plain users need no Celery. Deployments install
`pip install "celery[redis]"` and run, from the pack's folder:

- `python -m nodes.cluster.gateway`: the one address clients talk to (it
  speaks ComfyUI's /prompt, /history, /view, /ws and the pack's A1111 and
  workflow routes);
- `python -m nodes.cluster.worker`: one beside each ComfyUI server (one per
  GPU), running the jobs the gateway queued.

`docs/scale-out.md` describes the deployment and what happens when a worker
dies; `python -m nodes.cluster.launch` (`make cluster`) starts a whole cluster
on one machine. Modules run from the pack's root so that `nodes` is this
pack's package (ComfyUI's own `nodes` module is never on the path here).
"""
