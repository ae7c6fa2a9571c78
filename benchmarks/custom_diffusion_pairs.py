"""Two subjects in one image on the embedded mini model: Custom Diffusion joint training vs Custom
Diffusion trained per subject + closed-form merge vs DreamBooth trained jointly (Kumari et al. 2023,
Sec. 4.2). Regenerates the "Custom Diffusion: two-concept pairs" block of docs/results.md.

    OMP_NUM_THREADS=1 python benchmarks/custom_diffusion_pairs.py

For each pair (A, B) of mini-DreamBench subjects:
  (a) cd_joint  Custom Diffusion on both folders at once (one modifier token each, `--class-word A B`),
  (b) cd_merge  Custom Diffusion on each subject alone, then `personify merge` (closed form, Eq. 4),
  (c) db_joint  DreamBooth on both folders at once (one rare identifier each),
  plus `base`, the frozen model prompted without the subjects (the floor of every metric).
Every variant generates `--n-per-prompt` images for each two-subject prompt with the same seeds and
is scored with the mini evaluators: each subject's fidelity inside the image
(`personify.evaluation.regions`: best square window's mean DINO cosine to the subject's real
photos, divided by the same score of the real photos among themselves) and CLIP-T (the prompt
without identifiers, as `personify eval`). The subjects trained alone (the inputs of (b)) are also
scored on the matching single-subject prompts as the reference.

Resumable: each training is a run folder under `--out/<base model hash>/` and is reused when its
concept exists (a rerun after the shipped model changes trains again); merges are redone (timed).
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "cd-pairs"  # docs/results.md block <!-- cd-pairs:begin --> ... <!-- cd-pairs:end -->
PAIR_PROMPTS = [  # {0} {1}: A's identifier and class word, {2} {3}: B's (the world captions two-object scenes so)
    "a {0} {1} next to a {2} {3}",
    "a {0} {1} and a {2} {3} on the beach",
    "a {0} {1} next to a {2} {3} in the snow",
    "a {0} {1} and a {2} {3} with a city in the background",
]
SINGLE_PROMPTS = ["a {0} {1}", "a {0} {1} on the beach", "a {0} {1} in the snow", "a {0} {1} with a city in the background"]
METHODS = ("cd_joint", "cd_merge", "db_joint")


def plain(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def arguments(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", default=["dog:teapot", "cat:backpack", "dog:backpack", "cat:teapot", "teapot:backpack"],
                    help="subject pairs A:B from mini-DreamBench (a live subject with an object where possible)")
    ap.add_argument("--model", default="mini")
    ap.add_argument("--cd-steps", type=int, default=200,
                    help="Custom Diffusion steps per subject alone (paper on SD: 250; on the mini model validation DINO/CLIP-I "
                         "stopped rising after 200 of 250, and 100 left the images nearly the base model's)")
    ap.add_argument("--joint-steps", type=int, default=400, help="Custom Diffusion steps of a joint pair (paper: 2x one subject, 500 on SD)")
    ap.add_argument("--db-steps", type=int, default=400, help="DreamBooth steps of a joint pair (as Custom Diffusion's joint run)")
    ap.add_argument("--db-lr", type=float, default=1e-4,
                    help="DreamBooth learning rate: Custom Diffusion's (its mini default 2e-5 left the images like the base model's "
                         "after 200 and 400 joint steps); 0: the method's default")
    ap.add_argument("--n-per-prompt", type=int, default=4)
    ap.add_argument("--prompts", nargs="+", default=PAIR_PROMPTS, help="two-subject templates ({0} {1} = A, {2} {3} = B)")
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared: 1)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "cd_pairs"))
    ap.add_argument("--doc", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--render-only", action="store_true", help="only rewrite the docs section from the last results.json")
    return ap.parse_args(argv)


def overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """Intersection of two (top, left, side) squares over the smaller one's area (1: one inside the other)."""
    h = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    w = max(0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))
    return h * w / min(a[2], b[2]) ** 2


class Study:
    def __init__(self, args: argparse.Namespace):
        import personify
        from personify.evaluation.dreambench import load_mini
        from personify.evaluation.encoders import load_clip, load_dino
        from personify.evaluation.run import default_evaluator_path
        from personify.evaluation.dreambench import Evaluator  # noqa: I001

        self.args, self.personify = args, personify
        self.bench = load_mini()
        self.pairs = [tuple(p.split(":")) for p in args.pairs]
        for a, b in self.pairs:
            for s in (a, b):
                if s not in self.bench.subjects:
                    raise SystemExit(f"unknown subject {s!r}; choose from: {', '.join(sorted(self.bench.subjects))}")
            if a == b:
                raise SystemExit(f"pair {a}:{b}: two different subjects please")
        self.base = personify.load_pipeline(args.model)
        self.size = self.base.unet.config.sample_size * self.base.vae_scale_factor
        self.out = Path(args.out) / self.base.personify_base_hash[:12]
        self.ev = Evaluator(load_clip(default_evaluator_path("clip")), load_dino(default_evaluator_path("dino")))
        self.timing: dict[str, float] = {}
        self.trained: dict[str, dict] = {}  # run name -> {seconds, trained_now}
        self._real: dict[str, tuple] = {}

    # --- training -------------------------------------------------------------------------------
    def token(self, subject: str) -> str:
        return f"<{subject}>"

    def train(self, name: str, method: str, images, **options) -> Path:
        from personify.artifact import read_concept
        from personify.training.checkpoint import list_checkpoints

        run = self.out / "train" / name
        art = run / "concept.safetensors"
        t0, now = time.time(), not art.is_file()
        if now:
            print(f"[train] {name}", flush=True)
            self.personify.train(method, images=str(images), model=self.args.model, out=str(run), seed=self.args.seed, progress=False,
                                 checkpoint_every=100, resume=bool(list_checkpoints(run)), **options)
        wall = run / "wall.json"  # the training's wall time (prior images included), kept for reruns that reuse it
        if now:
            wall.write_text(json.dumps({"wall_s": round(time.time() - t0, 1)}))
        meta = read_concept(art)[1]
        self.trained[name] = {"wall_s": json.loads(wall.read_text())["wall_s"] if wall.is_file() else None, "trained_now": now,
                              "train_seconds": meta["metrics"]["train_seconds"], "steps": meta["metrics"]["steps"], "bytes": art.stat().st_size}
        return art

    def single(self, s: str) -> Path:
        sub = self.bench.subjects[s]
        return self.train(f"cd/{s}-s{self.args.cd_steps}", "custom_diffusion", sub.images[0].parent, class_word=[sub.class_word],
                          modifier_token=[self.token(s)], steps=self.args.cd_steps)

    def joint_folder(self, a: str, b: str, tokens: list[str], kind: str) -> Path:
        from personify.methods.custom_diffusion import join_concept_folders

        folder = self.out / "data" / f"{a}+{b}-{kind}"
        done = folder.with_name(folder.name + ".done")  # beside it: the loop warns about non-image files inside
        if not done.is_file():
            join_concept_folders([self.bench.subjects[s].images[0].parent for s in (a, b)], tokens, folder)
            done.write_text("")
        return folder

    def cd_joint(self, a: str, b: str) -> Path:
        toks = [self.token(a), self.token(b)]
        return self.train(f"cd_joint/{a}+{b}-s{self.args.joint_steps}", "custom_diffusion", self.joint_folder(a, b, toks, "cd"),
                          class_word=[self.bench.subjects[s].class_word for s in (a, b)], modifier_token=toks, steps=self.args.joint_steps)

    def db_joint(self, a: str, b: str, prior_folder: str) -> Path:
        from personify.tokens import rare_identifier

        first = rare_identifier(self.base.tokenizer)
        ids = [first, rare_identifier(self.base.tokenizer, exclude=(first,))]  # what DreamBooth picks itself for two subjects
        # Regularization: the same retrieved real images (captioned per class) as Custom Diffusion's joint run,
        # so (a)/(b)/(c) differ only in what trains.
        from personify.methods.custom_diffusion.config import CustomDiffusionConfig

        lr = {"learning_rate": self.args.db_lr} if self.args.db_lr else {}
        lam = CustomDiffusionConfig.__dataclass_fields__["prior_weight"].default  # DreamBooth's own default is lower (0.3)
        return self.train(f"db_joint/{a}+{b}-s{self.args.db_steps}" + (f"-lr{self.args.db_lr:g}" if lr else ""), "dreambooth",
                          self.joint_folder(a, b, ids, "db"), class_word=[self.bench.subjects[s].class_word for s in (a, b)], identifier=ids,
                          steps=self.args.db_steps, class_images=prior_folder, prior_weight=lam, **lr)

    def merge(self, a: str, b: str, arts: list[Path]) -> tuple[Path, dict]:
        from personify.artifact import read_concept
        from personify.methods.custom_diffusion import MergeConfig, main

        out = self.out / "merged" / f"{a}+{b}-s{self.args.cd_steps}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        main(MergeConfig(concept=[str(p) for p in arts], out=str(out), model=self.args.model))  # what `personify merge` runs
        wall = time.perf_counter() - t0
        m = read_concept(out)[1]
        return out, {"command_s": wall, **m["metrics"]}

    # --- generation and scores ------------------------------------------------------------------
    def generate(self, concept: Path | None, prompts: list[str]):
        from personify.generate import generate_images
        import torch

        pipe = self.base if concept is None else self.personify.load_pipeline(self.args.model)
        if concept is not None:
            self.personify.apply_concepts(pipe, [concept])
        n = self.args.n_per_prompt
        allp = [p for p in prompts for _ in range(n)]
        with torch.no_grad():
            return generate_images(pipe, allp, [self.args.seed + i for i in range(len(allp))], steps=self.args.sample_steps, guidance=self.args.guidance)

    def real(self, s: str):
        """(DINO embeddings of the subject's real photos (M, D), their window upper bound)."""
        import torch
        from personify.data.images import load_rgb, resize_crop
        from personify.evaluation.dreambench import pixels
        from personify.evaluation.regions import subject_upper_bound

        if s not in self._real:
            imgs = [resize_crop(load_rgb(p), self.size) for p in self.bench.subjects[s].images]
            with torch.no_grad():
                self._real[s] = (self.ev.dino.image(pixels(imgs)), subject_upper_bound(self.ev.dino, imgs))
        return self._real[s]

    def score(self, images, subjects: list[str], plain_prompts: list[str]) -> dict:
        import torch
        from personify.evaluation.regions import best_window, window_boxes, window_embeddings

        n = self.args.n_per_prompt
        with torch.no_grad():
            win = window_embeddings(self.ev.dino, images)
            _, clip = self.ev.embed(images)
            text = self.ev.text(plain_prompts).repeat_interleave(n, 0)
        out, per_image, where = {"clip_t": float((clip * text).sum(-1).mean())}, [], []
        for s in subjects:
            real, upper = self.real(s)
            best, arg = best_window(win, real)
            per_image.append(best / upper)
            where.append(arg)
            out[s] = float(best.mean() / upper)
        if len(subjects) > 1:
            out["both"] = float(torch.stack(per_image).min(0).values.mean())  # each image's weaker subject
            boxes = window_boxes(self.size)
            out["apart"] = sum(overlap(boxes[int(i)], boxes[int(j)]) < 0.5 for i, j in zip(*where)) / len(images)
        return out

    def sheet(self, images, name: str) -> None:
        from personify.generate import contact_sheet

        folder = self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        contact_sheet(images, cols=self.args.n_per_prompt).save(folder / f"{name}.png")

    # --- the study ------------------------------------------------------------------------------
    def run(self) -> dict:
        args = self.args
        subjects = list(dict.fromkeys(s for p in self.pairs for s in p))
        t = time.time()
        singles = {s: self.single(s) for s in subjects}
        joints, dbs, merges = {}, {}, {}
        for a, b in self.pairs:
            joints[a, b] = self.cd_joint(a, b)
            prior = self.personify_meta(joints[a, b])["config"]["method"]["class_images"]
            dbs[a, b] = self.db_joint(a, b, prior)
        self.timing["train_s"] = time.time() - t
        t = time.time()
        for a, b in self.pairs:
            merges[a, b] = self.merge(a, b, [singles[a], singles[b]])
        self.timing["merge_s"] = time.time() - t

        t = time.time()
        rows: dict = {"single": {}, "pairs": {}}
        for s in subjects:
            cls = self.bench.subjects[s].class_word
            prompts = [tpl.format(self.token(s), cls) for tpl in SINGLE_PROMPTS]
            plain_p = [plain(tpl.format("", cls)) for tpl in SINGLE_PROMPTS]
            imgs = {"cd_single": self.generate(singles[s], prompts), "base": self.generate(None, plain_p)}
            for k, v in imgs.items():
                self.sheet(v, f"{s}-{k}")
            rows["single"][s] = {k: self.score(v, [s], plain_p) for k, v in imgs.items()}
        for a, b in self.pairs:
            ca, cb = self.bench.subjects[a].class_word, self.bench.subjects[b].class_word
            plain_p = [plain(tpl.format("", ca, "", cb)) for tpl in args.prompts]
            variants = {"cd_joint": (joints[a, b], self.token(a), self.token(b)), "cd_merge": (merges[a, b][0], self.token(a), self.token(b))}
            ids = self.personify_meta(dbs[a, b])["tokens"]
            variants["db_joint"] = (dbs[a, b], ids[0], ids[1])
            res = {}
            for name, (concept, ta, tb) in variants.items():
                imgs = self.generate(concept, [tpl.format(ta, ca, tb, cb) for tpl in args.prompts])
                self.sheet(imgs, f"{a}+{b}-{name}")
                res[name] = self.score(imgs, [a, b], plain_p)
            imgs = self.generate(None, plain_p)
            self.sheet(imgs, f"{a}+{b}-base")
            res["base"] = self.score(imgs, [a, b], plain_p)
            rows["pairs"][f"{a}+{b}"] = res
            print(f"[score] {a}+{b}: " + ", ".join(f"{k}: {v[a]:.3f}/{v[b]:.3f}/{v['clip_t']:.3f}" for k, v in res.items()), flush=True)
        self.timing["generate_score_s"] = time.time() - t
        rows["merge"] = {f"{a}+{b}": m[1] for (a, b), m in merges.items()}
        rows["trained"] = self.trained
        rows["sizes"] = self.sizes(singles[subjects[0]])
        return rows

    def personify_meta(self, path: Path) -> dict:
        from personify.artifact import read_concept

        return read_concept(path)[1]

    def sizes(self, art: Path) -> dict:
        unet_params = sum(p.numel() for p in self.base.unet.parameters())
        meta = self.personify_meta(art)
        return {"artifact_bytes": art.stat().st_size, "unet_fp16_bytes": unet_params * 2, "unet_params": unet_params,
                "kv_fraction": meta["unet_fraction"], "artifact_vs_unet_fp16": art.stat().st_size / (unet_params * 2)}


# --- docs/results.md (section `cd-pairs`, written with benchmarks/results_doc.py) -------------------
def table(rows: dict, args, wall: float, timing: dict, command: str) -> str:
    pairs = list(rows["pairs"])
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    L = ["## Custom Diffusion: two-concept pairs", "",
         "Regenerated by (CPU, 1 torch thread, other jobs sharing the 2 cores):", "", "```", command, "```", "",
         f"Wall time: **{wall / 60:.1f} min** (training {timing['train_s']:.0f} s, merges {timing['merge_s']:.0f} s, "
         f"generation + scoring {timing['generate_score_s']:.0f} s; trainings reused from an earlier run: "
         f"{sum(not t['trained_now'] for t in rows['trained'].values())} of {len(rows['trained'])}).", "",
         f"Pairs: {', '.join(p.replace('+', ' + ') for p in pairs)}. Steps: Custom Diffusion {args.cd_steps} per subject alone, "
         f"{args.joint_steps} joint; DreamBooth {args.db_steps} joint. {args.n_per_prompt} images x {len(args.prompts)} prompts per "
         f"variant, same seeds for every variant: " + "; ".join(f"`{p}`" for p in args.prompts) + ".", "",
         "Fidelity of a subject in a two-subject image = best square window (32-64 px, stride 8, 51 windows) of its mean DINO "
         "cosine to the subject's real photos, divided by the same score of the real photos against each other "
         "(`personify.evaluation.regions`). *both* = per image the weaker of the two subjects, averaged. *apart* = share of images "
         "whose best windows for A and B share less than half of the smaller window (two separate objects rather than one blob or "
         "the whole image matching both). CLIP-T: whole image vs "
         "the prompt without identifiers. `base` = the frozen model on the same prompts without identifiers (the floor).", "",
         "Mean over pairs:", "",
         "| variant | fidelity A | fidelity B | both | apart | CLIP-T |", "|---|---|---|---|---|---|"]
    for v in ("base", *METHODS):
        fa = mean([rows["pairs"][p][v][p.split("+")[0]] for p in pairs])
        fb = mean([rows["pairs"][p][v][p.split("+")[1]] for p in pairs])
        L.append(f"| {v} | {fa:.3f} | {fb:.3f} | {mean([rows['pairs'][p][v]['both'] for p in pairs]):.3f} | "
                 f"{100 * mean([rows['pairs'][p][v]['apart'] for p in pairs]):.0f} % | {mean([rows['pairs'][p][v]['clip_t'] for p in pairs]):.3f} |")
    singles = rows["single"]
    L += ["", f"Reference, each subject trained alone (the merge's inputs) on the matching single-subject prompts "
          f"({'; '.join(f'`{p}`' for p in SINGLE_PROMPTS)}), same window fidelity:", "",
          "| subject | cd_single fidelity | base fidelity | cd_single CLIP-T | base CLIP-T |", "|---|---|---|---|---|"]
    for s, r in singles.items():
        L.append(f"| {s} | {r['cd_single'][s]:.3f} | {r['base'][s]:.3f} | {r['cd_single']['clip_t']:.3f} | {r['base']['clip_t']:.3f} |")
    L += ["", "Per pair (fidelity A / fidelity B / both / CLIP-T):", "",
          "| pair | " + " | ".join(("base", *METHODS)) + " |", "|---|" + "---|" * (1 + len(METHODS))]
    for p in pairs:
        a, b = p.split("+")
        L.append(f"| {a} + {b} | " + " | ".join(
            f"{rows['pairs'][p][v][a]:.3f} / {rows['pairs'][p][v][b]:.3f} / {rows['pairs'][p][v]['both']:.3f} / {rows['pairs'][p][v]['clip_t']:.3f}"
            for v in ("base", *METHODS)) + " |")
    sz, mg = rows["sizes"], list(rows["merge"].values())
    tr = rows["trained"]
    def secs(prefix):  # noqa: E306
        xs = [t["train_seconds"] for k, t in tr.items() if k.startswith(prefix)]
        return f"{mean(xs):.0f} s" if xs else "-"
    L += ["", f"Custom Diffusion artifact: {sz['artifact_bytes'] / 1024:.0f} KB = **{100 * sz['artifact_vs_unet_fp16']:.2f} %** of the fp16 UNet "
          f"({sz['unet_fp16_bytes'] / 1e6:.1f} MB; the K/V weights are {100 * sz['kv_fraction']:.2f} % of its {sz['unet_params'] / 1e6:.2f} M parameters). "
          f"Merge (`personify merge`, 2 concepts, 1,000 world captions): **{statistics.median(m['merge_seconds'] for m in mg):.2f} s** median "
          f"(max {max(m['merge_seconds'] for m in mg):.2f} s) inside `merge_concepts` (read, encode, solve, write), "
          f"{statistics.median(m['command_s'] for m in mg):.2f} s for the whole command in-process (model and caption loading included); "
          f"constraint residual ≤ {max(m['constraint_rel_residual'] for m in mg):.1e}; change on the regularization features: merge "
          f"{mean([m['reg_change_merge'] for m in mg]):.3f} vs averaging {mean([m['reg_change_average'] for m in mg]):.3f}.",
          f"Training time per run (1 thread, shared CPU): Custom Diffusion alone {secs('cd/')}, joint {secs('cd_joint/')}, DreamBooth joint {secs('db_joint/')}.",
          "", "Samples (one row per prompt, per pair and variant): `runs/cd_pairs/<model hash>/samples/`."]
    return "\n".join(L)


def main(argv=None) -> int:
    args = arguments(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    if args.render_only:  # rewrite the section from the last results.json (e.g. after editing the commentary)
        found = sorted(Path(args.out).glob("*/results.json"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise SystemExit(f"no results.json under {args.out}; run the study first")
        saved = json.loads(found[-1].read_text())
        write(saved["rows"], argparse.Namespace(**saved["args"]), saved["wall_s"], saved["timing"], saved["command"], args.doc)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.time()
    study = Study(args)
    rows = study.run()
    wall = time.time() - t0
    command = "OMP_NUM_THREADS=1 python benchmarks/custom_diffusion_pairs.py" + "".join(" " + shlex.quote(a) for a in argv)
    (study.out / "results.json").write_text(json.dumps({"args": vars(args), "wall_s": wall, "timing": study.timing, "command": command,
                                                         "rows": rows}, indent=1))
    write(rows, args, wall, study.timing, command, args.doc)
    print(f"{wall / 60:.1f} min")
    return 0


def write(rows: dict, args, wall: float, timing: dict, command: str, doc: str) -> None:
    from results_doc import write_section  # benchmarks/ is on sys.path when this runs as a script

    block = table(rows, args, wall, timing, command)
    print(block)
    print(f"wrote {write_section(SECTION, block, doc, notes=Path(__file__).with_suffix('.md'))}")


if __name__ == "__main__":
    sys.exit(main())
