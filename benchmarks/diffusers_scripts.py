"""personify vs diffusers' own example scripts: steps/s and peak memory, side by side.

    python benchmarks/diffusers_scripts.py --diffusers-dir /path/to/diffusers --deps-dir /path/to/torchvision-dir

Runs examples/dreambooth/train_dreambooth.py, examples/dreambooth/train_dreambooth_lora.py and
examples/textual_inversion/textual_inversion.py from a diffusers checkout (read in place, never
copied here) against `personify train --method dreambooth | lora | textual_inversion` on the same
model, instance images, steps, batch size, resolution, learning rate, seed, optimizer (AdamW, wd
1e-2), clipping (1.0 for DreamBooth/LoRA; none for TI, as diffusers' script has none) and schedule
(constant, no warm-up); no prior preservation unless --prior (then both sides read the same class
images: the other mini-DreamBench subjects of the class), fp32, no gradient checkpointing.

Every run is a subprocess started from here, one at a time, with the same thread count. A small
bootstrap (BOOT) starts both sides and records the time of every optimizer step through torch's
global optimizer-step hook, so steps/s is in-loop: (N - skip - 1) / (t[N-1] - t[skip]), start-up
and saving excluded. Peak memory: the child's peak RSS (os.wait4) on CPU; torch.cuda.max_memory_allocated
on GPU. Writes benchmarks/results/diffusers_scripts.{json,md}. Targets: >= 2x steps/s, <= 0.7x memory.

Needs, for the diffusers side only (not personify dependencies): the diffusers examples (their
check_min_version must accept the installed diffusers) and torchvision (only its pure-Python
transforms are used). PyPI's torchvision wheel is a CUDA build whose C++ ops cannot load against a
CPU-only torch ("operator torchvision::nms does not exist"); install it apart, never over torch:

    pip install --no-deps --target /path/to/torchvision-dir -c constraints.txt torchvision==0.28.0

--deps-dir puts that folder on the diffusers children's PYTHONPATH, and BOOT defines the two op
schemas torchvision's fake-kernel registrations need (nms, qnms) when its C++ library cannot load.
tensorboard and Jinja2 (the scripts' other needs) come with personify's environment.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from personify.methods import get_method

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "personify" / "assets"
METHODS = ("dreambooth", "lora", "textual_inversion")
SCRIPTS = {
    "dreambooth": "examples/dreambooth/train_dreambooth.py",
    "lora": "examples/dreambooth/train_dreambooth_lora.py",
    "textual_inversion": "examples/textual_inversion/textual_inversion.py",
}
LR = {m: get_method(m).Config.learning_rate for m in METHODS}  # personify's defaults, used on both sides
TARGET_SPEED, TARGET_MEMORY = 2.0, 0.7

# argv: BOOT STATS_FILE (SCRIPT.py | -m MODULE) ARGS...
BOOT = r"""
import atexit, glob, importlib.util, json, os, runpy, sys, time
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
spec = importlib.util.find_spec("torchvision")
if spec is not None:
    libs = glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so"))
    try:
        torch.ops.load_library(libs[0])
    except Exception:  # CUDA wheel on a CPU torch: declare the ops its fake kernels register for
        _tv = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            _tv.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
stamps = []
register_optimizer_step_post_hook(lambda *a: stamps.append(time.perf_counter()))
stats_file = sys.argv[1]
def _write():
    cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    with open(stats_file, "w") as f:
        json.dump({"stamps": stamps, "cuda_peak": cuda}, f)
atexit.register(_write)
if sys.argv[2] == "-m":
    sys.argv = [sys.argv[3]] + sys.argv[4:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def steps_per_second(stamps: list[float], skip: int) -> float:
    """Steps/s between optimizer step `skip` and the last one (the first `skip` are warm-up)."""
    if len(stamps) < skip + 2:
        raise ValueError(f"need more than {skip + 1} optimizer steps to time, got {len(stamps)}")
    return (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip])


def summarize(runs: list[dict]) -> dict:
    """Median steps/s and wall time, highest peak memory over repeated runs (each run kept too)."""
    return {"steps_per_s": median(r["steps_per_s"] for r in runs), "peak_mib": max(r["peak_mib"] for r in runs),
            "wall_s": median(r["wall_s"] for r in runs), "memory": runs[0]["memory"], "runs": runs}


def diffusers_cmd(method: str, diffusers_dir: str, model: str, images: str, class_word: str, out: str, steps: int,
                  batch: int, resolution: int, seed: int, class_dir: str | None = None, mixed_precision: str = "no") -> list[str]:
    cmd = [str(Path(diffusers_dir) / SCRIPTS[method]), "--pretrained_model_name_or_path", model,
           "--resolution", str(resolution), "--train_batch_size", str(batch), "--max_train_steps", str(steps),
           "--learning_rate", str(LR[method]), "--lr_scheduler", "constant", "--lr_warmup_steps", "0", "--seed", str(seed),
           "--output_dir", out, "--checkpointing_steps", "100000000", "--center_crop", "--mixed_precision", mixed_precision]
    if method == "textual_inversion":
        return cmd + ["--train_data_dir", images, "--placeholder_token", f"<my-{class_word}>", "--initializer_token", class_word,
                      "--save_steps", "100000000"]
    cmd += ["--instance_data_dir", images, "--instance_prompt", f"a sks {class_word}"]
    if class_dir:
        n = len(list(Path(class_dir).iterdir()))
        cmd += ["--with_prior_preservation", "--prior_loss_weight", "1.0", "--class_data_dir", class_dir,
                "--class_prompt", f"a photo of a {class_word}", "--num_class_images", str(n)]
    return cmd


def personify_cmd(method: str, model: str, images: str, class_word: str, out: str, steps: int, batch: int,
                  resolution: int, seed: int, class_dir: str | None = None, mixed_precision: str = "no") -> list[str]:
    cmd = ["-m", "personify.cli", "train", "--method", method, "--model", model, "--images", images,
           "--class-word", class_word, "--out", out, "--steps", str(steps), "--batch-size", str(batch),
           "--resolution", str(resolution), "--learning-rate", str(LR[method]), "--seed", str(seed),
           "--checkpoint-every", "100000000", "--mixed-precision", mixed_precision]
    if method == "textual_inversion":  # diffusers' TI: no clipping, random flips (p = 0.5)
        return cmd + ["--placeholder", f"<my-{class_word}>", "--max-grad-norm", "0", "--flip"]
    cmd += ["--identifier", "sks"]
    if class_dir:
        n = len(list(Path(class_dir).iterdir()))
        cmd += ["--prior-weight", "1.0", "--class-images", class_dir, "--num-class-images", str(n)]
    else:
        cmd += ["--prior-weight", "0"]
    return cmd


def run_child(argv: list[str], env: dict[str, str], workdir: Path, name: str, skip: int) -> dict:
    stats, log = workdir / f"{name}.stats.json", workdir / f"{name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-c", BOOT, str(stats), *argv], stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{name} failed (exit {p.returncode}); last lines of {log}:\n" + "\n".join(log.read_text().splitlines()[-25:]))
    s = json.loads(stats.read_text())
    peak = s["cuda_peak"] if s["cuda_peak"] is not None else usage.ru_maxrss * 1024  # ru_maxrss: KiB on Linux
    return {"steps_per_s": steps_per_second(s["stamps"], skip), "optimizer_steps": len(s["stamps"]),
            "peak_mib": peak / 2**20, "memory": "cuda_max_allocated" if s["cuda_peak"] is not None else "peak_rss", "wall_s": wall}


def machine_facts(diffusers_dir: str, threads: int) -> dict:
    import diffusers
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "threads_per_run": threads, "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "diffusers": diffusers.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "personify_commit": git,
        "diffusers_scripts_sha256": {m: hashlib.sha256((Path(diffusers_dir) / s).read_bytes()).hexdigest()[:12] for m, s in SCRIPTS.items()},
    }


def class_folder(class_word: str, subject: str, dest: Path) -> Path:
    """Class images for --prior: the other mini-DreamBench subjects of the same class, in one folder."""
    subjects = json.loads((ASSETS / "mini_dreambench" / "subjects.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for s in subjects:
        if s["class"] == class_word and s["subject"] != subject:
            for rel in s["images"]:
                shutil.copy(ASSETS / "mini_dreambench" / rel, dest / rel.replace("/", "_"))
    if not any(dest.iterdir()):
        sys.exit(f"no other mini-DreamBench subject of class {class_word!r} to use as class images; drop --prior")
    return dest


NOTES = """\
How it is measured. Each cell is a fresh subprocess of this benchmark, one at a time, same thread
count. steps/s is timed inside the training loop (torch's global optimizer-step hook, set by the
bootstrap both sides start under): (N - skip - 1) / (t_last - t_skip), so start-up, caching and saving
are left out; the median over the repeats is shown, the range in brackets. Peak memory is the child's
peak RSS (`os.wait4`) over the whole process, start-up and final save included, and the highest over
the repeats; "above imports" subtracts the RSS of a process that only imports torch, diffusers,
transformers and accelerate, which both sides pay before any model is loaded.

Same settings on both sides: model, instance images, steps, batch size, resolution (center crop),
learning rate (personify's defaults: DreamBooth 2e-5, LoRA 1e-4, TI 5e-3), seed, AdamW (wd 1e-2),
constant schedule without warm-up, fp32, no gradient checkpointing, tensorboard logging every step,
gradient clipping 1.0 (TI: none, as diffusers' TI script has none; TI also flips with p = 0.5 on both
sides). LoRA: rank 4 = alpha on the UNet attention projections. Prior preservation (rows "prior: yes")
reads the same class images on both sides. diffusers' scripts run with their defaults otherwise
(text embeddings not pre-computed, VAE encoding every step); personify caches VAE posteriors and, when
the text encoder is frozen, the text embeddings. Batch sizes divide the 5 instance (and 30 class)
images: diffusers' DataLoader keeps the last, partial batch of an epoch, which would make its average
batch smaller than personify's.

torchvision workaround (diffusers side only). The scripts import `torchvision.transforms`. PyPI's
torchvision wheel is a CUDA build: with the CPU-only torch its C++ library does not load, and
`import torchvision` fails with "operator torchvision::nms does not exist" (its fake-kernel
registrations need the op schemas the library would have defined). It is installed outside the
venv (`pip install --no-deps --target DIR -c constraints.txt torchvision==0.28.0`, so torch is never
replaced), DIR goes on the diffusers children's PYTHONPATH (`--deps-dir`), and the bootstrap defines
the two schemas (`nms`, `qnms`) with `torch.library.Library("torchvision", "DEF")` when the C++ library
cannot load. Only the pure-Python transforms run. The mini model's fp16 weights on disk need no
`--variant` (the files carry no `.fp16` suffix): diffusers loads them into fp32 modules, which
train_dreambooth.py requires.
"""


def markdown(rows: list[dict], facts: dict, command: str, baseline_mib: float) -> str:
    f = lambda side: f"{side['steps_per_s']:.2f} ({min(r['steps_per_s'] for r in side['runs']):.2f}-{max(r['steps_per_s'] for r in side['runs']):.2f})"
    lines = [
        "Regenerated by:", "", "```", command, "```", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items() if k != "diffusers_scripts_sha256") + ".",
        "diffusers scripts (sha256 prefix): " + ", ".join(f"{k} {v}" for k, v in facts["diffusers_scripts_sha256"].items()) + ".", "",
        f"Targets: personify / diffusers steps/s >= {TARGET_SPEED:g}x and peak memory <= {TARGET_MEMORY:g}x. "
        f"Import baseline: {baseline_mib:.0f} MiB.", "",
        "| method | batch | prior | steps | diffusers steps/s | personify steps/s | speed ratio | diffusers peak MiB | personify peak MiB | memory ratio | ratio above imports | diffusers wall s | personify wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for r in rows:
        d, p = r["diffusers"], r["personify"]
        tag = f"{r['method']} (batch {r['batch']}{', prior' if r['prior'] else ''})"
        sp = f"**{r['speed_ratio']:.2f}x**" + ("" if r["speed_ratio"] >= TARGET_SPEED else " misses")
        mem = f"**{r['memory_ratio']:.2f}x**" + ("" if r["memory_ratio"] <= TARGET_MEMORY else " misses")
        base = baseline_mib if d["memory"] == "peak_rss" else 0.0  # GPU: allocated memory, no import baseline
        above = (p["peak_mib"] - base) / max(1e-9, d["peak_mib"] - base)
        lines.append(f"| {r['method']} | {r['batch']} | {'yes' if r['prior'] else 'no'} | {r['steps']} | {f(d)} | {f(p)} | {sp} | "
                     f"{d['peak_mib']:.0f} | {p['peak_mib']:.0f} | {mem} | {above:.2f}x | {d['wall_s']:.1f} | {p['wall_s']:.1f} |")
        if r["speed_ratio"] < 1:
            verdicts.append(f"- personify is **slower** than diffusers on {tag}: {r['speed_ratio']:.2f}x the steps/s.")
        if r["memory_ratio"] > 1:
            verdicts.append(f"- personify uses **more memory** than diffusers on {tag}: {r['memory_ratio']:.2f}x the peak.")
    met = sum(r["speed_ratio"] >= TARGET_SPEED for r in rows), sum(r["memory_ratio"] <= TARGET_MEMORY for r in rows)
    lines += ["", f"Speed target met in {met[0]} of {len(rows)} rows, memory target in {met[1]} of {len(rows)}.", *verdicts, "", NOTES]
    return "\n".join(lines)


def import_baseline_mib(env: dict[str, str]) -> float:
    code = "import torch, diffusers, transformers, accelerate; from diffusers import UNet2DConditionModel, AutoencoderKL; from transformers import CLIPTextModel"
    p = subprocess.Popen([sys.executable, "-c", code], env=env)
    return os.wait4(p.pid, 0)[2].ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--diffusers-dir", required=True, help="diffusers checkout holding examples/")
    ap.add_argument("--deps-dir", help="folder with torchvision for the diffusers side (pip install --target)")
    ap.add_argument("--model", default=str(ASSETS / "mini-sd"), help="diffusers SD folder both sides load")
    ap.add_argument("--subject", default="dog", help="mini-DreamBench subject (instance images)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=1, help="runs per side (interleaved); the median steps/s is reported")
    ap.add_argument("--skip", type=int, default=10, help="warm-up optimizer steps left out of the timing")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 5], help="5 divides the 5 instance and 30 class images (see NOTES)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--prior", action="store_true", help="also DreamBooth/LoRA rows with prior preservation")
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every run")
    ap.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diffusers_scripts"), help="writes OUT.json and OUT.md")
    args = ap.parse_args()

    subjects = {s["subject"]: s for s in json.loads((ASSETS / "mini_dreambench" / "subjects.json").read_text())}
    images, class_word = str(ASSETS / "mini_dreambench" / args.subject), subjects[args.subject]["class"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(p for p in [str(ROOT / "src"), os.environ.get("PYTHONPATH")] if p)}
    denv = {**env, "PYTHONPATH": os.pathsep.join(p for p in [args.deps_dir, env["PYTHONPATH"]] if p)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="personify-vs-diffusers-") as tmp:
        work = Path(tmp)
        class_dir = str(class_folder(class_word, args.subject, work / "class_images")) if args.prior else None
        cases = [(m, b, None) for b in args.batch_sizes for m in args.methods]
        cases += [(m, b, class_dir) for b in args.batch_sizes for m in args.methods if args.prior and m != "textual_inversion"]
        for method, batch, cdir in cases:
            tag = f"{method}-b{batch}{'-prior' if cdir else ''}"
            common = dict(model=args.model, images=images, class_word=class_word, steps=args.steps, batch=batch,
                          resolution=args.resolution, seed=args.seed, class_dir=cdir, mixed_precision=args.mixed_precision)
            row = {"method": method, "batch": batch, "prior": bool(cdir), "steps": args.steps, "diffusers": [], "personify": []}
            for r in range(args.repeats):  # interleaved, so a change in machine load hits both sides alike
                row["diffusers"].append(run_child(diffusers_cmd(method, args.diffusers_dir, out=str(work / f"d-{tag}-{r}"), **common), denv, work, f"diffusers-{tag}-{r}", args.skip))
                row["personify"].append(run_child(personify_cmd(method, out=str(work / f"p-{tag}-{r}"), **common), env, work, f"personify-{tag}-{r}", args.skip))
            row["diffusers"], row["personify"] = summarize(row["diffusers"]), summarize(row["personify"])
            row["speed_ratio"] = row["personify"]["steps_per_s"] / row["diffusers"]["steps_per_s"]
            row["memory_ratio"] = row["personify"]["peak_mib"] / row["diffusers"]["peak_mib"]
            rows.append(row)
            print(f"{tag:<28} steps/s diffusers {row['diffusers']['steps_per_s']:7.2f} personify {row['personify']['steps_per_s']:7.2f} "
                  f"({row['speed_ratio']:.2f}x)   peak MiB diffusers {row['diffusers']['peak_mib']:6.0f} personify "
                  f"{row['personify']['peak_mib']:6.0f} ({row['memory_ratio']:.2f}x)", flush=True)
    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    facts = machine_facts(args.diffusers_dir, args.threads)
    baseline = import_baseline_mib(env)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command, "machine": facts, "import_baseline_mib": baseline, "rows": rows}, indent=1) + "\n")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from results_doc import write_section

    md = out.with_suffix(".md")
    if not md.exists():
        md.write_text("# personify vs diffusers' example scripts\n\nText outside the generated block is kept when the benchmark reruns.\n")
    write_section("diffusers-scripts", markdown(rows, facts, command, baseline), md)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
