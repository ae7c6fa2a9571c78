"""Expert fan-out over subjects with Ray: one task per subject, resumable, failed tasks resubmitted.

The driver (this process) lists the subjects, skips those whose shard already exists, and submits one
Ray task per missing subject with the config's resources (`num_cpus`, `num_gpus`: 0.125 lets 8
mini-model experts share a GPU). Ray's own retries are off (`max_retries=0`): the driver resubmits a
task that raised or whose worker died, up to `max_attempts` tries, so both failure kinds are counted
the same way. A rerun of the whole command continues with only the missing shards; a retried expert
resumes its LoRA from the checkpoints of the dead attempt when it lands on the same node.

Local by default (`ray.init` starts a cluster on this machine); `ray_address` joins an existing
cluster, e.g. one started with `ray start --head` and `ray start --address HEAD:6379` on the other
nodes. Every node then needs personify (and the model) installed, and `out` must be a folder all
nodes share (NFS or similar): workers write their shards there.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Callable

from ..artifact import atomic_write
from ..config import to_dict
from ..errors import PersonifyError
from .experts import ExpertsConfig, make_shard, shard_path


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PersonifyError("expert fan-out needs Ray; install it with `pip install 'personify[ray]'`") from None
    return ray


def _run_one(clusters, i: int, subject: str, cfg: ExpertsConfig, work: Callable) -> dict:
    """The Ray task body (`clusters` arrives resolved from the object store)."""
    t0 = time.time()
    info = work(clusters[i], subject, cfg)
    return {**info, "seconds": round(time.time() - t0, 2), "node": socket.gethostname(), "pid": os.getpid()}


def _connect(ray, cfg: ExpertsConfig) -> bool:
    """Join or start a cluster unless already connected; True when this call started the connection."""
    if ray.is_initialized():
        return False
    if cfg.ray_address:
        ray.init(address=cfg.ray_address)
    else:
        ray.init(num_cpus=cfg.local_cpus or None, include_dashboard=False)
    have = ray.cluster_resources()
    for res, need in (("CPU", cfg.num_cpus), ("GPU", cfg.num_gpus)):
        if need > have.get(res, 0):
            raise PersonifyError(f"each expert asks for {need} {res} but the Ray cluster has {have.get(res, 0)}; lower --num-{res.lower()}s")
    return True


def run_experts(cfg: ExpertsConfig, clusters=None, names: list[str] | None = None, work: Callable = make_shard) -> dict:
    """Write every missing shard; returns the run summary (also `<out>/experts.json`).

    `clusters`: any indexable of `data.Cluster` (default: `SpriteClusters` of the world cache);
    `names`: subject ids for the shard names (default: `clusters.name(i)` or the index);
    `work(cluster, subject, cfg) -> dict`: the per-subject job (tests wrap it to inject failures)."""
    ray = _import_ray()
    if clusters is None:
        from .data import SpriteClusters

        clusters = SpriteClusters(cfg.world_cache, cfg.n_demos, cfg.seed)
    n = min(cfg.n_subjects or len(clusters), len(clusters))
    names = names or [clusters.name(i) if hasattr(clusters, "name") else f"{i:05d}" for i in range(n)]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(n) if not shard_path(out, names[i], cfg.seed).is_file()]
    print(f"experts: {n - len(todo)} of {n} shards already in {out}; {len(todo)} to train", flush=True)
    t0, attempts, failed, done = time.time(), {i: 0 for i in todo}, {}, []
    started = _connect(ray, cfg) if todo else False
    try:
        if todo:
            ref = ray.put(clusters)  # once into the object store, not once per task
            task = ray.remote(_run_one).options(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, max_retries=0)
            running = {}

            def submit(i: int) -> None:
                attempts[i] += 1
                running[task.remote(ref, i, names[i], cfg, work)] = i

            for i in todo:
                submit(i)
            with open(out / "experts.jsonl", "a") as log:
                while running:
                    [ready], _ = ray.wait(list(running), num_returns=1)
                    i = running.pop(ready)
                    try:
                        info = ray.get(ready)
                    except ray.exceptions.RayError as e:  # the task raised, or its worker/node died
                        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
                        print(f"experts: {names[i]} failed (attempt {attempts[i]}/{cfg.max_attempts}): {reason}", flush=True)
                        log.write(json.dumps({"subject": names[i], "attempt": attempts[i], "error": reason}) + "\n")
                        if attempts[i] < cfg.max_attempts:
                            submit(i)
                        else:
                            failed[names[i]] = reason
                        continue
                    done.append(names[i])
                    log.write(json.dumps({**info, "attempt": attempts[i]}) + "\n")
                    log.flush()
                    print(f"experts: {len(done)}/{len(todo)} {names[i]}: kept {info.get('kept', '-')}/{info.get('generated', '-')} "
                          f"in {info['seconds']:.1f} s (attempt {attempts[i]})", flush=True)
    finally:
        if started:
            ray.shutdown()
    summary = {"subjects": n, "skipped": n - len(todo), "written": done, "failed": failed, "attempts": {names[i]: a for i, a in attempts.items()},
               "seconds": round(time.time() - t0, 2), "config": to_dict(cfg)}
    atomic_write(out / "experts.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=1, default=str)))
    if failed:
        raise PersonifyError(f"{len(failed)} expert(s) failed after {cfg.max_attempts} tries ({next(iter(failed))}: {next(iter(failed.values()))}); "
                             f"rerun the same command to retry only the missing shards")
    return summary


def main(cfg: ExpertsConfig) -> Path:
    """`personify incontext experts`: returns the shard folder."""
    run_experts(cfg)
    return Path(cfg.out)
