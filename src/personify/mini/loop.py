"""Generic resumable training loop (chunked, atomic checkpoints, CSV + TensorBoard logs).

A stage object provides ``state()`` (name -> object with state_dict/load_state_dict: modules,
optimizers), ``train_step(step, gen) -> dict[str, float]`` and ``save_model(path) -> dict``.

Determinism: every step draws all its randomness from ``torch.Generator().manual_seed(f(seed,
step))``, so a run resumed from a checkpoint replays exactly the same batches and noise; the
global torch/numpy RNG states are checkpointed too for anything else.
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import time
import zlib
from pathlib import Path

import numpy as np
import torch


class StopRequested:
    """SIGTERM/SIGINT -> finish the current step, checkpoint, exit cleanly."""

    def __init__(self) -> None:
        self.flag = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.flag = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def step_generator(seed: int, tag: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(tag.encode()) * 7919 + step) % (2**63 - 1))


def atomic_torch_save(obj, path: Path) -> None:
    from ..artifact import atomic_write

    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_dir(path: Path, writer) -> object:
    """Call ``writer(tmp_dir)`` then swap ``tmp_dir`` into ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    result = writer(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return result


class Logger:
    def __init__(self, stage_dir: Path, resume_step: int) -> None:
        self.csv_path = stage_dir / "log.csv"
        rows: list[dict] = []
        if self.csv_path.exists():  # drop rows written after the checkpoint we resume from
            with open(self.csv_path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.fields: list[str] | None = list(rows[0].keys()) if rows else None
        self.rows = rows
        self._rewrite()
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(stage_dir / "tb"), purge_step=resume_step + 1 if resume_step else None)
        except Exception:  # tensorboard missing: CSV only
            self.tb = None

    def _rewrite(self) -> None:
        if not self.fields:
            return
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.csv_path)

    def log(self, step: int, values: dict) -> None:
        row = {"step": step, **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()}}
        if self.fields is None or any(k not in self.fields for k in row):
            self.fields = list(dict.fromkeys((self.fields or []) + list(row)))
            self.rows.append(row)
            self._rewrite()
        else:
            self.rows.append(row)
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def lr_at(step: int, peak: float, warmup: int, max_steps: int = 0, decay_steps: int = 0) -> float:
    """Linear warm-up, constant, then (with `decay_steps`) a linear decay to 0 at `max_steps`: the
    warmup-stable-decay schedule (Hu et al. 2024, "MiniCPM"), so a constant-lr run can be extended at
    will and any of its checkpoints cooled down in a short branch."""
    lr = peak * min(1.0, (step + 1) / max(1, warmup))
    if decay_steps and step >= max_steps - decay_steps:
        lr *= max(0.0, (max_steps - step) / decay_steps)
    return lr


def run_loop(stage, stage_dir: Path, *, seed: int, tag: str, max_steps: int, lr: float, warmup_steps: int,
             log_every: int, checkpoint_every_s: float, time_budget_s: float = 0.0, decay_steps: int = 0,
             optimizers: list[torch.optim.Optimizer] | None = None, verbose: bool = True) -> dict:
    """Train ``stage`` until ``max_steps`` (or the time budget / a signal), resuming from
    ``stage_dir/checkpoint.pt``. Returns the status dict also written to ``stage_dir/status.json``."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = stage_dir / "checkpoint.pt"
    objects = stage.state()
    optimizers = optimizers if optimizers is not None else [o for o in objects.values() if isinstance(o, torch.optim.Optimizer)]
    step = 0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        for name, obj in objects.items():
            obj.load_state_dict(ck["state"][name])
        step = int(ck["step"])
        torch.set_rng_state(ck["torch_rng"])
        np.random.set_state(ck["numpy_rng"])
        if verbose:
            print(f"[{tag}] resumed from {ckpt_path} at step {step}", flush=True)

    def save_checkpoint() -> None:
        atomic_torch_save({
            "step": step, "tag": tag,
            "state": {name: obj.state_dict() for name, obj in objects.items()},
            "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
        }, ckpt_path)

    logger = Logger(stage_dir, step)
    t0 = last_ckpt = time.time()
    acc: dict[str, float] = {}
    n_acc = 0
    t_log = time.time()
    saved_step = step if (stage_dir / "model").exists() and (stage_dir / "status.json").exists() else -1
    status = {}
    with StopRequested() as stop:
        while step < max_steps:
            cur_lr = lr_at(step, lr, warmup_steps, max_steps, decay_steps)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = cur_lr * group.get("lr_scale", 1.0)
            metrics = stage.train_step(step, step_generator(seed, tag, step))
            step += 1
            for k, v in metrics.items():
                if not math.isfinite(v):
                    raise FloatingPointError(f"[{tag}] non-finite {k}={v} at step {step}")
                acc[k] = acc.get(k, 0.0) + float(v)
            n_acc += 1
            if step % log_every == 0 or step == max_steps:
                dt = time.time() - t_log
                row = {k: v / n_acc for k, v in acc.items()}
                row.update(lr=cur_lr, steps_per_s=n_acc / max(dt, 1e-9), wall_s=time.time() - t0)
                logger.log(step, row)
                if verbose:
                    print(f"[{tag}] step {step}/{max_steps} " + " ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)
                acc, n_acc, t_log = {}, 0, time.time()
            out_of_time = time_budget_s and time.time() - t0 > time_budget_s
            if time.time() - last_ckpt > checkpoint_every_s or stop.flag or out_of_time:
                save_checkpoint()
                status = _save_model(stage, stage_dir, step, max_steps, tag)
                saved_step, last_ckpt = step, time.time()
            if stop.flag or out_of_time:
                break
        if step != saved_step:
            save_checkpoint()
            status = _save_model(stage, stage_dir, step, max_steps, tag)
    logger.close()
    if not status:
        status = json.loads((stage_dir / "status.json").read_text())
    if verbose:
        print(f"[{tag}] stopped at step {step}/{max_steps}; status: {status}", flush=True)
    # not written to status.json: tells a caller running several stages to stop too
    return {**status, "interrupted": True} if stop.flag else status


def _save_model(stage, stage_dir: Path, step: int, max_steps: int, tag: str) -> dict:
    info = atomic_write_dir(stage_dir / "model", stage.save_model) or {}
    status = {"stage": tag, "step": step, "max_steps": max_steps, "done": step >= max_steps,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info}
    tmp = stage_dir / "status.json.tmp"
    tmp.write_text(json.dumps(status, indent=1))
    os.replace(tmp, stage_dir / "status.json")
    return status
