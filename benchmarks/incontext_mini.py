"""The in-context apprentice (SuTI) on the mini model: train it, then score it on mini-DreamBench with
zero tuning, side by side with DreamBooth and LoRA from `benchmarks/mini_dreambench.py`.

    OMP_NUM_THREADS=1 python benchmarks/incontext_mini.py --train-steps 1500 --batch-size 8 --n-demos 3 --lr 1e-3

1. Train (`personify.incontext.train`, ground-truth sprite clusters of the mini world) into
   `--train-out` (runs/apprentice). Resumable: rerunning continues from its checkpoint up to
   `--train-steps`; `--weights FILE` skips training and scores that file instead.
2. `--ship DIR`: an fp16 copy of the weights goes to DIR (if <= 40 MB), and that copy is what is scored.
3. Held-out demo gain: ε-MSE of the apprentice on real images of the held-out mini-DreamBench
   subjects (Fluent family, never in training) given 3 of their other images as demos, vs no demos
   and vs another subject's demos.
4. DreamBench protocol per subject (`evaluation.dreambench.evaluate_subject` with
   `apprentice_generator`): demos = the subject's first `--n-demos` real images in file order,
   captioned "a photo of a <class>"; prompts = the templates without the identifier. The base model on
   the same prompts (no demos) is scored too: it is the CLIP-T normalizer and the floor.
5. DreamBooth / LoRA numbers are read from `--baseline` (runs/results/results.json) for the
   subjects both runs scored; their train seconds from the concept files under `--baseline-train`.

Writes `<eval-out>/report.html`, `<eval-out>/incontext.json` and the `incontext` section of docs/results.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
SKILLS = {"recontextualization": "recontextualization", "accessorization": "accessorization",
          "property": "property change (colour / material / shape)"}  # DreamBench kind -> SuTI skill
SHIP_LIMIT_MB = 40.0
VARIANTS = {"both": "apprentice (zero tuning)", "cond": "apprentice, demo-guided CFG (zero tuning)",
            "dual": "apprentice, dual CFG (zero tuning)"}  # --demo-cfg -> row label (dual: scales added in main)


def sha(path: Path, n: int = 12) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:n]


def evaluator_files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha(p) for p in sorted(root.rglob("*")) if p.is_file() and p.suffix in (".safetensors", ".json")}


def train_log_summary(log: Path) -> dict:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    if not rows:
        return {}
    seconds, last = 0.0, 0.0
    for r in rows:  # `s` restarts at every resumed segment
        if r["s"] < last:
            seconds += last
        last = r["s"]
    seconds += last
    k = max(1, min(500, len(rows) // 4))
    first, tail = [r["loss"] for r in rows[:k]], [r["loss"] for r in rows[-k:]]
    return {"steps": rows[-1]["step"], "seconds": round(seconds, 1), "s_per_step": round(seconds / len(rows), 3),
            "loss_window": k,
            "loss_first": round(sum(first) / len(first), 4), "loss_last": round(sum(tail) / len(tail), 4)}


def weights_meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("personify", "{}"))


def to_fp16_copy(weights: Path, dest: Path) -> list[Path]:
    """Adapter (+ tuned UNet) as fp16 safetensors in `dest`, metadata kept; refused above the size limit."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    files = [weights] + ([weights.with_name(u)] if (u := weights_meta(weights).get("unet_file")) else [])
    out = []
    for src in files:
        with safe_open(str(src), "pt") as f:
            tensors = {k: f.get_tensor(k).half() for k in f.keys()}
            m = f.metadata()
        tmp = dest / (src.name + ".tmp")
        save_file(tensors, str(tmp), metadata=m)
        out.append(tmp)
    mb = sum(p.stat().st_size for p in out) / 2**20
    if mb > SHIP_LIMIT_MB:
        for p in out:
            p.unlink()
        raise SystemExit(f"not shipped: {mb:.1f} MB > {SHIP_LIMIT_MB:.0f} MB")
    final = []
    for p in out:
        os.replace(p, p.with_name(p.name[: -len(".tmp")]))
        final.append(p.with_name(p.name[: -len(".tmp")]))
    return final


def demo_gain(pipe, app, bench, names: list[str], n_demos: int, draws: int = 8, seed: int = 0) -> dict:
    """Held-out ε-MSE on each subject's non-demo real images: own demos vs no demos vs the next subject's demos."""
    import torch

    from personify.data.images import load_rgb
    from personify.incontext.generate import encode_demo_images
    from personify.incontext.train import images_to_latents
    from personify.sampling import encode_prompts

    import numpy as np

    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    subs = [bench.subjects[n] for n in names]
    ctxs, t_enc = [], []
    for s in subs:
        demos = [load_rgb(p) for p in s.images[:n_demos]]
        t0 = time.perf_counter()
        ctxs.append(encode_demo_images(pipe, app, demos, [f"a photo of a {s.class_word}"] * n_demos))
        t_enc.append(time.perf_counter() - t0)
    losses = {"own": [], "none": [], "other": []}
    sched = pipe.scheduler
    with torch.no_grad():
        for i, s in enumerate(subs):
            from personify.data.images import resize_crop

            targets = np.stack([np.asarray(resize_crop(load_rgb(p), size)) for p in s.images[n_demos:]])
            z0 = images_to_latents(pipe, targets).repeat_interleave(draws, 0)
            g = torch.Generator().manual_seed(seed * 1000 + i)
            noise = torch.randn(z0.shape, generator=g)
            t = torch.randint(0, sched.config.num_train_timesteps, (z0.shape[0],), generator=g)
            zt = sched.add_noise(z0, noise, t)
            cond = encode_prompts(pipe.tokenizer, pipe.text_encoder, [f"a photo of a {s.class_word}"] * z0.shape[0])
            for key, ctx in (("own", ctxs[i]), ("none", None), ("other", ctxs[(i + 1) % len(subs)])):
                pred = app(zt, t, cond, ctx)
                losses[key].append(float(((pred - noise) ** 2).mean()))
    m = {k: float(np.mean(v)) for k, v in losses.items()}
    m["gain_vs_none"] = (m["none"] - m["own"]) / m["none"]
    m["own_better_than_other"] = float(np.mean([o < x for o, x in zip(losses["own"], losses["other"])]))
    m["demo_encode_ms"] = 1000 * float(np.mean(t_enc))
    return m


def load_cached(path: Path, key: dict, real):
    from personify.evaluation.dreambench import SubjectResult

    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    if d.get("key") != key:
        return None
    r = d["result"]
    return SubjectResult(r["subject"], r["label"], r["per_kind"], r["overall"], r["upper"], {"real": real}, r["seconds"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mini")
    ap.add_argument("--train-out", default="runs/apprentice")
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-demos", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--unet-lr", type=float, default=0.0)
    ap.add_argument("--t-demo", type=int, default=50)
    ap.add_argument("--generic-p", type=float, default=0.0, help="fraction of training clusters captioned 'animal'/'object' instead of their class word")
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--init", help="warm-start the apprentice from this file (e.g. the one shipped for the previous base model)")
    ap.add_argument("--weights", help="score this apprentice file instead of training")
    ap.add_argument("--allow-other-base", action="store_true",
                    help="score a --weights file trained on another base model (same shapes): a transfer measurement, reported as such")
    ap.add_argument("--ship", help="write an fp16 copy here (<= 40 MB) and score that copy")
    ap.add_argument("--subjects", nargs="*", default=[])
    ap.add_argument("--n-per-prompt", type=int, default=4)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-out", default="runs/apprentice/eval")
    ap.add_argument("--baseline", default="runs/results/results.json")
    ap.add_argument("--baseline-train", default="runs/results/train")
    ap.add_argument("--methods", nargs="+", default=["dreambooth", "lora"])
    ap.add_argument("--demo-cfg", nargs="+", default=["both", "cond"], choices=list(VARIANTS),
                    help="CFG variants to score: both branches see the demos (SuTI), or only the conditional one")
    ap.add_argument("--demo-guidance", type=float, default=3.0, help="demo guidance scale of the dual variant")
    ap.add_argument("--no-stylization", action="store_true", help="skip SuTI's stylization skill (3 style prompts per subject, scored apart)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/results.md (smoke runs)")
    args = ap.parse_args()
    VARIANTS["dual"] = f"apprentice, dual CFG: text {args.guidance:g}, demos {args.demo_guidance:g} (zero tuning)"

    import torch

    torch.set_num_threads(args.threads)
    from personify.evaluation.dreambench import Evaluator, apprentice_generator, evaluate_subject, load_mini, strip_identifier, stylization_prompts
    from personify.evaluation.encoders import load_clip, load_dino
    from personify.evaluation.report import summarize, write_report
    from personify.evaluation.run import default_evaluator_path
    from personify.incontext.train import ApprenticeTrainConfig, main as train_main
    from personify.models import load_pipeline

    t_start = time.time()
    argv = "OMP_NUM_THREADS=1 python " + " ".join(shlex.quote(a) for a in sys.argv)
    train = {}
    if args.weights:
        weights = Path(args.weights)
    else:
        cfg = ApprenticeTrainConfig(model=args.model, out=args.train_out, steps=args.train_steps, batch_size=args.batch_size,
                                    n_demos=args.n_demos, lr=args.lr, unet_lr=args.unet_lr, t_demo=args.t_demo, generic_p=args.generic_p,
                                    save_every=args.save_every, device="cpu", init=args.init)
        t0 = time.time()
        weights = train_main(cfg)
        train = {"config": {k: getattr(cfg, k) for k in ("steps", "batch_size", "n_demos", "lr", "unet_lr", "t_demo", "generic_p", "init")},
                 "this_call_wall_s": round(time.time() - t0, 1), **train_log_summary(Path(args.train_out) / "log.jsonl")}
        print("train:", json.dumps(train))
    if args.ship:
        shipped = to_fp16_copy(weights, Path(args.ship))
        weights = shipped[0]
        print("shipped:", ", ".join(f"{p} ({p.stat().st_size / 2**20:.2f} MB)" for p in shipped))
    files = [weights] + ([weights.with_name(u)] if (u := weights_meta(weights).get("unet_file")) else [])
    weights_mb = sum(p.stat().st_size for p in files) / 2**20

    bench = load_mini()
    names = args.subjects or sorted(bench.subjects)
    ev_root = default_evaluator_path("clip").parent
    ev_files = evaluator_files(ev_root)
    ev = Evaluator(load_clip(ev_root / "clip"), load_dino(ev_root / "dino"))
    base = load_pipeline(args.model)
    pipe = load_pipeline(args.model)
    out = Path(args.eval_out)
    (out / "subjects").mkdir(parents=True, exist_ok=True)
    # full hash: the scores are on decoded pixels, so a swapped-in decoder must not reuse them
    key = {"weights": sha(weights, 16), "model": base.personify_full_hash, "evaluators": ev_files, "n_per_prompt": args.n_per_prompt,
           "steps": args.steps, "guidance": args.guidance, "seed": args.seed, "n_demos": args.n_demos}

    from personify.incontext.generate import load_apprentice

    app = load_apprentice(pipe, str(weights), allow_other_base=args.allow_other_base)
    gain = demo_gain(pipe, app, bench, sorted(bench.subjects), args.n_demos)
    print("held-out demo gain:", json.dumps(gain))

    from personify.data.images import load_rgb, resize_crop

    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    results, style_results, base_t, demos_used = [], [], {}, {}
    kw = dict(n_per_prompt=args.n_per_prompt, steps=args.steps, guidance=args.guidance, seed=args.seed)
    for n in names:
        sub = bench.subjects[n]
        real = [resize_crop(load_rgb(p), size) for p in sub.images]
        runs = [("base model, class word only", "base", None, {**key, "weights": None})]
        runs += [(VARIANTS[v], "apprentice" if v == "both" else f"apprentice-{v}", v,
                  key if v == "both" else {**key, "demo_cfg": v, **({"demo_guidance": args.demo_guidance} if v == "dual" else {})})
                 for v in args.demo_cfg]
        for label, tag, variant, ckey in runs:
            # The protocol's 25 prompts, then (apart, so that s / subject stays the protocol's) the stylization prompts.
            passes = [("", {}, results)] + ([] if args.no_stylization else [(".style", {"prompts": stylization_prompts()}, style_results)])
            for suffix, extra, into in passes:
                cache, ck = out / "subjects" / f"{n}.{tag}{suffix}.json", json.loads(json.dumps({**ckey, **extra}))  # as read back
                r = load_cached(cache, ck, real)
                if r is None:
                    gen = None if variant is None else apprentice_generator(pipe, app, sub, args.n_demos, args.steps, args.guidance, demo_cfg=variant,
                                                                                   demo_guidance=args.demo_guidance)[0]
                    r = evaluate_subject(base if variant is None else pipe, bench, sub, None, ev, label, **kw, **extra, generate=gen)
                    cache.write_text(json.dumps({"key": ck, "result": r.to_json()}))
                into.append(r)
            r = results[-1]
            demos_used[n] = [p.name for p in sub.images[: args.n_demos]]
            if tag == "base":
                base_t[n] = r.overall["clip_t"]
            print(f"{n:20s} {tag:10s} DINO {r.overall['dino']:.3f}  CLIP-I {r.overall['clip_i']:.3f}  CLIP-T {r.overall['clip_t']:.3f}"
                  f"  upper DINO {r.upper['dino']:.3f}  {r.seconds:.1f} s", flush=True)
    report = write_report(results, out, "personify — in-context apprentice on mini-DreamBench (zero tuning)", base_t)
    summary = summarize(results, base_t)
    style = summarize(style_results) if style_results else {}
    labels = [VARIANTS[v] for v in args.demo_cfg]

    # ---- DreamBooth / LoRA from mini_dreambench.py --------------------------------------------
    baseline = Path(args.baseline)
    side: dict[str, dict] = {}
    notes: list[str] = []
    if baseline.is_file():
        bres = json.loads(baseline.read_text())
        ours = {r.subject: r for r in results if r.label == labels[0]}
        for label in args.methods:
            rows = [SimpleNamespace(**r) for r in bres["subjects"] if r["label"] == label and r["subject"] in ours]
            if not rows:
                notes.append(f"{label}: no subjects in common with this run in {baseline}")
                continue
            common = [r.subject for r in rows]
            drift = max(abs(r.upper["dino"] - ours[r.subject].upper["dino"]) for r in rows)
            if drift > 1e-4:
                notes.append(f"**{label}: the real-vs-real DINO bound differs from this run's by up to {drift:.4f}: its numbers were made "
                             "with other evaluator weights, so the comparison is not valid; rerun benchmarks/mini_dreambench.py.**")
            bt = bres.get("base_clip_t", {})
            s = summarize(rows, bt)[label]
            train_s = []
            for subj in common:
                art = Path(args.baseline_train) / label / subj / "concept.safetensors"
                if art.is_file():
                    from personify.artifact import read_concept

                    train_s.append(read_concept(art)[1]["metrics"]["train_seconds"])
            a = summarize([r for r in results if r.subject in common], base_t)
            side[label] = {"subjects": common, "method": s, "apprentice": {v: a[v] for v in labels},
                           "train_s": sum(train_s) / len(train_s) if train_s else None, "gen_s": s["seconds_per_subject"]}
    else:
        notes.append(f"{baseline} not found: the DreamBooth/LoRA columns are empty. Run `python benchmarks/mini_dreambench.py "
                     "--methods dreambooth lora ...`, then rerun this command (training resumes at its last step, scored subjects are cached).")
        print(notes[-1])

    # ---- the section ----------------------------------------------------------------------------
    up = summary[labels[0]]["upper"]
    fmt = lambda s, bt=True: (f"{s['overall']['dino']:.3f} | {s['overall']['clip_i']:.3f} | {s['overall']['clip_t']:.3f} | "  # noqa: E731
                              f"{s['normalized']['dino']:.3f} | {s['normalized']['clip_i']:.3f} | "
                              f"{s['normalized'].get('clip_t', float('nan')):.3f}")
    L = ["## In-context apprentice (SuTI) on mini-DreamBench, zero tuning", "", "Regenerated by:", "", "```", argv, "```", "",
         f"Wall time of this command: {time.time() - t_start:.0f} s (1 thread, 2-core box shared with other jobs). "
         f"Report: `{report}`.", ""]
    if train:
        c = train["config"]
        L += [f"Training (`personify.incontext.train`, ground-truth sprite clusters of the mini world, {'adapter + UNet' if c['unet_lr'] else 'demo-attention adapter only, UNet frozen'}): "
              f"{train.get('steps')} steps × batch {c['batch_size']} × K={c['n_demos']} demos, lr {c['lr']:g}"
              + (f", UNet lr {c['unet_lr']:g}" if c["unet_lr"] else "") + f", t_demo {c['t_demo']}"
              + (f", {c['generic_p']:.0%} of clusters captioned with a generic word" if c.get("generic_p") else "")
              + (f", warm-started from `{c['init']}`" if c.get("init") else "") + "; "
              f"{train.get('seconds', 0):.0f} s of training ({train.get('s_per_step', 0):.2f} s/step), "
              f"training loss (ε-MSE at random timesteps, mean of the first / last {train.get('loss_window')} steps) "
              f"{train.get('loss_first', 0):.4f} → {train.get('loss_last', 0):.4f}; the base model already predicts most of a target "
              "from its caption, so the paired held-out demo gain below is the measurement that shows learning.", ""]
    trained_on = weights_meta(weights).get("base_model_hash")
    other = f" **The weights were trained on base model {trained_on} and are scored here on another base without re-tuning " \
            "(`--allow-other-base`): a transfer measurement.**" if trained_on and trained_on != base.personify_base_hash else ""
    L += [f"Weights scored: `{weights}` ({weights_mb:.2f} MB, sha256 {sha(weights)}), base model {base.personify_base_hash}.{other} "
          f"Evaluators (`assets/evaluators`, sha256 prefixes): " + ", ".join(f"`{k}` {v}" for k, v in ev_files.items() if k.endswith(".safetensors")) + ".", "",
          f"Protocol: {len(names)} held-out subjects (Fluent family, never in the apprentice's training data), 25 prompts × "
          f"{args.n_per_prompt} images, {args.steps} DDIM steps, guidance {args.guidance}. Demonstrations: the subject's first "
          f"{args.n_demos} real images in file order ({', '.join(sorted(set(map(tuple, demos_used.values())))[0])}), captioned "
          "\"a photo of a <class>\"; DreamBooth/LoRA train on all of the subject's real images, so the apprentice sees a subset of the "
          "same information. The metrics compare against all real images (demos included). Prompt = the template without the identifier "
          "(\"a dog on the beach\"). The base model on the same prompts is the CLIP-T normalizer and the floor. CFG variants: "
          "*zero tuning* = both guidance branches see the demos (SuTI's choice, the default of `generate_with_demos`); *demo-guided* = "
          "only the conditional branch sees them (`demo_cfg=\"cond\"`), so guidance 7.5 amplifies the demo signal as well as the text; *dual* = "
          "one scale per condition, ε = ε(∅) + w·(ε(text) − ε(∅)) + w_d·(ε(text, demos) − ε(text)) (`demo_cfg=\"dual\"`, InstructPix2Pix-style).", "",
          "| model | subjects | DINO | CLIP-I | CLIP-T | DINO norm | CLIP-I norm | CLIP-T norm | s / subject |", "|---|---|---|---|---|---|---|---|---|"]
    for label, s in summary.items():
        L.append(f"| {label} | {s['subjects']} | {fmt(s)} | {s['seconds_per_subject']:.1f} |")
    L += ["", f"Real-vs-real upper bound (mean over these subjects): DINO {up['dino']:.3f}, CLIP-I {up['clip_i']:.3f}. "
          f"s / subject = generating the {25 * args.n_per_prompt} images and scoring them (apprentice: incl. encoding the demos).", "",
          "Per SuTI skill (DreamBench prompt kind → skill; its 5 property prompts are colour, shiny, wet and cube-shaped; DreamBench has "
          "no stylization prompts, so stylization is scored apart on the mini world's 3 styles: "
          + ", ".join(f'"{strip_identifier(t, "dog")}"' for t, _ in stylization_prompts()) + f", {args.n_per_prompt} images each):", "",
          "| model | skill | DINO | CLIP-I | CLIP-T |", "|---|---|---|---|---|"]
    for label, s in summary.items():
        kinds = {**s["per_kind"], **(style[label]["per_kind"] if label in style else {})}
        for k, v in kinds.items():
            L.append(f"| {label} | {SKILLS.get(k, k)} | {v['dino']:.3f} | {v['clip_i']:.3f} | {v['clip_t']:.3f} |")
    L += ["", f"Held-out demo gain (ε-MSE on the non-demo real images of all {len(bench.subjects)} subjects, caption \"a photo of a <class>\", "
          f"8 noise draws each): own demos {gain['own']:.4f}, no demos {gain['none']:.4f}, another subject's demos {gain['other']:.4f} "
          f"→ {100 * gain['gain_vs_none']:.1f} % lower loss than without demos; own demos beat another subject's on "
          f"{100 * gain['own_better_than_other']:.0f} % of subjects. Encoding 3 demos: {gain['demo_encode_ms']:.0f} ms.", ""]
    L += ["### Side by side with DreamBooth and LoRA (same subjects, numbers from `benchmarks/mini_dreambench.py`)", ""]
    L += ["| method | subjects | DINO | CLIP-I | CLIP-T | DINO norm | CLIP-I norm | CLIP-T norm | train s | generate+score s | total s / subject |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
    fastest = None
    for label, d in side.items():
        tot = (d["train_s"] or float("nan")) + d["gen_s"]
        L.append(f"| {label} | {len(d['subjects'])} | {fmt(d['method'])} | {d['train_s'] or float('nan'):.0f} | {d['gen_s']:.1f} | {tot:.1f} |")
        for v, a in d["apprentice"].items():
            L.append(f"| {v}, same subjects | {len(d['subjects'])} | {fmt(a)} | 0 | {a['seconds_per_subject']:.1f} | {a['seconds_per_subject']:.1f} |")
        if d["train_s"] is not None and (fastest is None or tot < fastest[1]):
            fastest = (label, tot, d)
    if not side:
        L += ["| dreambooth | – | | | | | | | | | |", "| lora | – | | | | | | | | | |"]
    L += [""] + [f"* {n}" for n in notes]
    L += ["", "Targets:", ""]
    if fastest:
        label, tot, d = fastest
        a_s = max(a["seconds_per_subject"] for a in d["apprentice"].values())
        per_prompt = (d["train_s"] + d["gen_s"] / 25) / (a_s / 25)
        L.append(f"* speed: fastest tuning method {label}, {tot:.0f} s per subject (train {d['train_s']:.0f} s + generate/score "
                 f"{d['gen_s']:.0f} s) vs the apprentice's {a_s:.0f} s (slower variant): **{tot / a_s:.1f}×** for the whole protocol (target ≥ 50×: "
                 f"{'met' if tot / a_s >= 50 else 'not met'}); for one prompt's 4 images {per_prompt:.0f}×; adaptation alone "
                 f"(train vs encoding the demos) {d['train_s'] / (gain['demo_encode_ms'] / 1000):.0f}×. Timings come from different runs "
                 "on a shared box; `benchmarks/incontext_speed.py` measures both sides in one process "
                 "(`benchmarks/results/incontext_speed.md`).")
    else:
        L.append(f"* speed: no tuning-method timings yet (see above); the apprentice takes {summary[labels[0]]['seconds_per_subject']:.0f} s per "
                 f"subject for the {25 * args.n_per_prompt} images, {gain['demo_encode_ms']:.0f} ms of which is reading the demos.")
    for v in labels:
        dn = summary[v]["normalized"]["dino"]
        L.append(f"* fidelity, {v}: DINO {summary[v]['overall']['dino']:.3f} = {dn:.3f} × the real-vs-real bound ({up['dino']:.3f}); "
                 f"target ≥ 0.95 × bound: **{'met' if dn >= 0.95 else 'not met'}**.")
    from results_doc import write_section

    data = {"command": argv, "train": train, "weights": str(weights), "weights_mb": weights_mb, "evaluators": ev_files, "demo_gain": gain,
            "demos": demos_used, "summary": summary, "stylization": style, "side_by_side": side, "notes": notes}
    (out / "incontext.json").write_text(json.dumps(data, indent=1, default=str))
    if not args.no_doc:
        print(f"wrote {write_section('incontext', chr(10).join(L), args.doc, notes=Path(__file__).with_suffix('.md'))}")
    else:
        print("\n".join(L))
    return 0


if __name__ == "__main__":
    sys.exit(main())
