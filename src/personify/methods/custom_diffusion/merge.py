"""Closed-form merge of separately trained Custom Diffusion concepts (Kumari et al. 2023, Sec. 3.2,
Eq. 4): one set of cross-attention K/V weights that maps every concept's prompt features exactly as
that concept's own fine-tuned weights do, and otherwise stays as close as possible to the base.

For each K or V projection of the UNet (W: out x d, acting on text features c in R^d):

    Ŵ = argmin_W ‖W C_regᵀ − W₀ C_regᵀ‖_F²   subject to   W Cᵀ = V

C (s x d): the text features (rows) of the target concepts' prompts, every token from BOS to EOS as
in the paper ("all the words across the concepts' captions, flattened"); V (out x s): each row c of
concept i mapped by that concept's fine-tuned W_i, i.e. V = [W_1 C_1ᵀ ... W_N C_Nᵀ]. C_reg: the text
features of ~1,000 regularization captions (all tokens BOS..EOS).

Derivation. Write Δ = W − W₀, M = C_regᵀ C_reg (d x d, symmetric positive definite; a ridge
ε·tr(M)/d·I keeps it so) and R = V − W₀ Cᵀ. The problem is min tr(Δ M Δᵀ) s.t. Δ Cᵀ = R.
Lagrangian: L = tr(Δ M Δᵀ) − 2 tr(Λᵀ (Δ Cᵀ − R)), Λ: out x s.
    ∂L/∂Δ = 2 Δ M − 2 Λ C = 0           =>  Δ = Λ C M⁻¹
    Δ Cᵀ = Λ (C M⁻¹ Cᵀ) = R             =>  Λ = R (C M⁻¹ Cᵀ)⁻¹
    Ŵ = W₀ + (V − W₀ Cᵀ) (C M⁻¹ Cᵀ)⁻¹ C M⁻¹.
Every K/V layer reads the same text features, so A = (C M⁻¹ Cᵀ)⁻¹ C M⁻¹ (s x d) is solved once
(float64) and each layer costs one (out x s)(s x d) product. (C M⁻¹ Cᵀ) is inverted with a
pseudo-inverse: when there are more constraint rows than feature dimensions (s > d, only on toy
models) the constraints then hold in the least-squares sense.

Identical rows. CLIP's text encoder is causal, so a token's feature depends only on the tokens up
to it: BOS and a shared prefix ("photo of a") give bit-identical rows in every concept's prompts,
whose fine-tuned targets differ (W_1 c ≠ W_2 c). Such rows are merged into one constraint (same
token-id prefix = same row) whose target is the mean of the concepts' targets; without this the
constraints would contradict each other and C M⁻¹ Cᵀ would be singular. Rows from the modifier
token on are concept-specific and are met exactly.
"""
from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ...config import ModelSource, check
from ...errors import PersonifyError
from ...models.loading import same_base

KV = ("to_k", "to_v")


# --- text features --------------------------------------------------------------------------------
def tokenize_with(tokenizer, prompt: str, extra: dict[str, int], padding: bool = False) -> list[int]:
    """Token ids of `prompt` (BOS ... EOS [padding]) where the words in `extra` (modifier tokens not
    in the tokenizer) get the given ids. Same result as the tokenizer after `add_tokens(extra)`,
    without changing the caller's tokenizer."""
    pieces = re.split("(" + "|".join(re.escape(t) for t in sorted(extra, key=len, reverse=True)) + ")", prompt) if extra else [prompt]
    ids = [tokenizer.bos_token_id]
    for piece in pieces:
        if piece in extra:
            ids.append(extra[piece])
        elif piece.strip():
            ids += tokenizer(piece.strip(), add_special_tokens=False).input_ids
    L = tokenizer.model_max_length
    ids = ids[: L - 1] + [tokenizer.eos_token_id]
    if padding:
        ids += [tokenizer.pad_token_id] * (L - len(ids))
    return ids


@torch.no_grad()
def token_features(pipe, prompts: list[str], vectors: dict[str, torch.Tensor] | None = None, padding: bool = False, batch: int = 256):
    """Text-encoder hidden states (what the UNet's cross-attention reads) of every token of each
    prompt, BOS..EOS (and the padding with `padding`). `vectors`: embeddings of tokens the pipeline
    does not have (modifier tokens); they are appended to the embedding table only for this call.
    CLIP's text encoder is causal, so a batch is padded only to its longest prompt: the features of
    BOS..EOS do not depend on later positions. Returns [(ids (n_i,), features (n_i, d) float64)]."""
    tok, te = pipe.tokenizer, pipe.text_encoder
    vectors = vectors or {}
    old = te.get_input_embeddings()
    base = old.weight.shape[0]
    extra = {t: base + j for j, t in enumerate(vectors)}
    L = tok.model_max_length
    if extra:
        seqs = [tokenize_with(tok, p, extra, padding) for p in prompts]
    else:  # one batched tokenizer call (much faster than one call per caption)
        enc = tok(list(prompts), padding="max_length" if padding else False, truncation=True, max_length=L).input_ids
        seqs = [list(x) for x in enc]
    if vectors:
        table = torch.cat([old.weight.detach(), torch.stack([v.reshape(-1).to(old.weight) for v in vectors.values()])])
        te.set_input_embeddings(torch.nn.Embedding.from_pretrained(table, freeze=True))
    out: list = [None] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    try:
        for i in range(0, len(order), batch):
            chunk = order[i : i + batch]
            n = max(len(seqs[j]) for j in chunk)
            ids = torch.tensor([seqs[j] + [tok.pad_token_id] * (n - len(seqs[j])) for j in chunk], device=te.device)
            hidden = te(ids)[0].double().cpu()
            for r, j in enumerate(chunk):
                out[j] = (torch.tensor(seqs[j]), hidden[r, : len(seqs[j])])
    finally:
        if vectors:
            te.set_input_embeddings(old)
    return out


# --- the solve ------------------------------------------------------------------------------------
def gram(C_reg: torch.Tensor) -> torch.Tensor:
    """M = C_regᵀ C_reg (d, d), float64: all the merge needs of the regularization features."""
    C_reg = C_reg.double()
    return C_reg.T @ C_reg


def merge_projection(C: torch.Tensor, M: torch.Tensor, ridge: float = 1e-6) -> torch.Tensor:
    """A = (C M⁻¹ Cᵀ)⁺ C M⁻¹ with M = C_regᵀ C_reg + ridge·tr(M)/d·I (float64), shape (s, d)."""
    C, M = C.double(), M.double()
    d = C.shape[1]
    M = M + ridge * (torch.trace(M) / d).clamp_min(1e-12) * torch.eye(d, dtype=M.dtype)
    CMinv = torch.linalg.solve(M, C.T).T  # C M⁻¹ (M symmetric)
    G = CMinv @ C.T  # C M⁻¹ Cᵀ, (s, s)
    return torch.linalg.pinv(G, hermitian=True, rtol=1e-12) @ CMinv


def reg_change(delta: torch.Tensor, M: torch.Tensor) -> float:
    """‖Δ C_regᵀ‖_F² = tr(Δ M Δᵀ), without forming Δ C_regᵀ."""
    delta = delta.double()
    return float(((delta @ M) * delta).sum())


def merge_weights(W0: torch.Tensor, C: torch.Tensor, V: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Ŵ = W₀ + (V − W₀ Cᵀ) A  (float64)."""
    W0 = W0.double()
    return W0 + (V.double() - W0 @ C.double().T) @ A


# --- concepts -------------------------------------------------------------------------------------
def _read(paths, pipe):
    from ...artifact import read_concept
    from .method import TOKEN_PREFIX, UNET_PREFIX

    concepts = []
    for p in paths:
        tensors, meta = read_concept(p)
        if meta.get("method") != "custom_diffusion":
            raise PersonifyError(f"{meta['path']}: is a {meta.get('method')!r} concept; only Custom Diffusion concepts can be merged")
        concepts.append((tensors, meta))
    base = getattr(pipe, "personify_base_hash", None)
    first = concepts[0][1]
    for _, meta in concepts:
        # same_base also accepts the older fingerprints the loaded model answers to; with no model hash
        # to compare against, the concepts must at least agree with each other
        if base is None and meta["base_model_hash"] != first["base_model_hash"]:
            raise PersonifyError(
                f"{meta['path']}: trained on base model {meta['base_model_hash']} ({meta.get('base_model')}), but {first['path']} on "
                f"{first['base_model_hash']} ({first.get('base_model')}); only concepts of the same base model can be merged"
            )
        if not same_base(pipe, meta["base_model_hash"]):
            raise PersonifyError(
                f"{meta['path']}: trained on base model {meta['base_model_hash']} ({meta.get('base_model')}), but the loaded model is {base}; "
                f"pass --model {meta.get('base_model')} (only concepts of the loaded base model can be merged)"
            )
    owner: dict[str, str] = {}
    for _, meta in concepts:
        for t in meta.get("tokens") or []:
            if t in owner:
                raise PersonifyError(f"{meta['path']}: modifier token {t!r} is also used by {owner[t]}; retrain one concept with another --modifier-token")
            owner[t] = meta["path"]
    vocab = pipe.tokenizer.get_vocab()
    for t, path in owner.items():
        if t in vocab or t + "</w>" in vocab:
            raise PersonifyError(f"{path}: modifier token {t!r} is already in the loaded model's vocabulary; merge on a freshly loaded base model")
    keys = None
    for tensors, meta in concepts:
        unet_keys = sorted(k[len(UNET_PREFIX) + 1 :] for k in tensors if k.startswith(UNET_PREFIX + "."))
        bad = [k for k in unet_keys if k.rsplit(".", 2)[-2] not in KV]
        if bad:
            raise PersonifyError(f"{meta['path']}: trained with --freeze-model crossattn ({bad[0]}); the closed-form merge is for K/V-only concepts (crossattn_kv)")
        if keys is None:
            keys = unet_keys
        elif unet_keys != keys:
            raise PersonifyError(f"{meta['path']}: holds other cross-attention layers than {first['path']}; both must come from the same base model")
        for t in meta.get("tokens") or []:
            if f"{TOKEN_PREFIX}.{t}" not in tensors:
                raise PersonifyError(f"{meta['path']}: no embedding for its token {t!r}; not a complete Custom Diffusion concept")
    return concepts, keys


def merge_concepts(pipe, paths: list[str | Path], reg_captions: list[str], out: str | Path = "merged.safetensors",
                   ridge: float = 1e-6, padding: bool = False, dtype: torch.dtype | None = None) -> Path:
    """Merge separately trained Custom Diffusion concepts (same base model as `pipe`, distinct
    modifier tokens) into one concept artifact at `out`; `pipe` is left unchanged (load the result
    with `apply_concepts`). Raises PersonifyError on mixed base models, shared tokens, non-K/V
    concepts. Metrics in the artifact: merge seconds, constraint residual, change on reg features."""
    from ... import __version__
    from ...artifact import save_concept
    from .method import TOKEN_PREFIX, UNET_PREFIX, unet_param

    t0 = time.perf_counter()
    if len(paths) < 2:
        raise PersonifyError("merge needs at least two concepts: personify merge --concept A.safetensors B.safetensors --out merged.safetensors")
    if not reg_captions:
        raise PersonifyError("merge needs regularization captions (the paper uses ~1,000)")
    concepts, keys = _read(paths, pipe)
    vectors = {t: tensors[f"{TOKEN_PREFIX}.{t}"].float() for tensors, meta in concepts for t in meta["tokens"]}

    # Target rows per concept; rows shared by several concepts (BOS, common prefix) -> one row.
    prompts = [[c["instance_prompt"] for c in meta.get("concepts") or []] or [meta["instance_prompt"]] for _, meta in concepts]
    feats = token_features(pipe, [p for ps in prompts for p in ps], vectors, padding)
    row_of: dict[tuple, int] = {}
    rows: list[torch.Tensor] = []
    users: list[list[int]] = []  # concepts whose target applies to row r
    k = 0
    for ci, ps in enumerate(prompts):
        for _ in ps:
            ids, f = feats[k]
            k += 1
            ids = ids.tolist()
            for j in range(len(ids)):
                key = tuple(ids[: j + 1])
                if key not in row_of:
                    row_of[key] = len(rows)
                    rows.append(f[j])
                    users.append([])
                if ci not in users[row_of[key]]:
                    users[row_of[key]].append(ci)
    C = torch.stack(rows)  # (s, d) float64
    share = torch.zeros(len(concepts), 1, C.shape[0], dtype=torch.float64)  # concept ci's weight in row r's target
    for r, us in enumerate(users):
        share[us, 0, r] = 1.0 / len(us)
    # Every token of every caption, repeats included: M weights features by how often prompts use them.
    C_reg = torch.cat([f for _, f in token_features(pipe, list(reg_captions), None, padding)])
    M = gram(C_reg)
    A = merge_projection(C, M, ridge)

    merged: dict[str, torch.Tensor] = {}
    worst, reg_merge, reg_avg, reg_norm = 0.0, 0.0, 0.0, 0.0
    for key in keys:
        W0 = unet_param(pipe.unet, key).detach().double().cpu()
        Ws = [tensors[f"{UNET_PREFIX}.{key}"].double() for tensors, _ in concepts]
        # V: column r = mean over the concepts using row r of W_i c_r.
        V = sum((Ws[ci] @ C.T) * share[ci] for ci in range(len(Ws)))
        W = merge_weights(W0, C, V, A)
        merged[key] = W
        worst = max(worst, float((W @ C.T - V).norm() / V.norm().clamp_min(1e-12)))
        reg_merge += reg_change(W - W0, M)
        reg_avg += reg_change(torch.stack(Ws).mean(0) - W0, M)
        reg_norm += reg_change(W0, M)
    out_dtype = dtype or next(iter(concepts[0][0].values())).dtype
    tensors = {f"{TOKEN_PREFIX}.{t}": v for t, v in vectors.items()}
    tensors.update({f"{UNET_PREFIX}.{k}": w.float() for k, w in merged.items()})
    sub = [c for _, meta in concepts for c in (meta.get("concepts") or [{"token": meta["tokens"][0], "class_word": meta.get("class_word"), "instance_prompt": meta["instance_prompt"]}])]
    seconds = time.perf_counter() - t0
    unet_total = sum(p.numel() for p in pipe.unet.parameters())
    meta = {
        "method": "custom_diffusion", "base_model_hash": pipe.personify_base_hash, "base_model": concepts[0][1].get("base_model"),
        "tokens": list(vectors), "class_word": [c["class_word"] for c in sub],
        "instance_prompt": sub[0]["instance_prompt"] + "".join(f" and a {c['token']} {c['class_word']}" for c in sub[1:]),
        "concepts": sub, "freeze_model": "crossattn_kv", "merged_from": [meta["path"] for _, meta in concepts],
        "unet_fraction": sum(w.numel() for w in merged.values()) / unet_total,
        "config": {"merge": {"ridge": ridge, "padding": padding, "num_reg_captions": len(reg_captions), "constraint_rows": int(C.shape[0])}},
        "metrics": {"merge_seconds": round(seconds, 4), "constraint_rel_residual": worst,
                    "reg_change_merge": (reg_merge / reg_norm) ** 0.5, "reg_change_average": (reg_avg / reg_norm) ** 0.5},
        "personify_version": __version__,
    }
    return save_concept(Path(out), tensors, meta, out_dtype)


# --- regularization captions ----------------------------------------------------------------------
_SUBJECTS = ("dog", "cat", "car", "house", "tree", "person", "woman", "man", "child", "bird", "horse", "flower", "teapot",
             "chair", "table", "cup", "book", "bicycle", "boat", "mountain", "city street", "bowl of fruit", "guitar", "clock",
             "backpack", "shoe", "lamp", "cake", "bridge", "train")
_SCENES = ("on the beach", "in the snow", "in a forest", "on a wooden table", "in a city", "at night", "in the rain",
           "on a white background", "in a garden", "next to a window", "on the grass", "in a kitchen", "under a blue sky",
           "in the desert", "by a lake")
_FORMS = ("a photo of a {s} {p}", "a {s} {p}", "a close-up photo of a {s}", "a painting of a {s} {p}", "{s}, {p}",
          "an old photo of a {s}", "a watercolor of a {s} {p}")


def builtin_captions(n: int = 1000, seed: int = 0) -> list[str]:
    """Generic captions (subjects x scenes x phrasings) when no caption data set is at hand."""
    all_caps = [f.format(s=s, p=p) for s in _SUBJECTS for p in _SCENES for f in _FORMS]
    all_caps = list(dict.fromkeys(all_caps))
    idx = np.random.default_rng(seed).permutation(len(all_caps))[:n]
    return [all_caps[i] for i in sorted(idx)]


def world_captions(n: int = 1000, seed: int = 0) -> list[str]:
    """`n` distinct captions of the emoji world (the mini model's training captions); raises
    PersonifyError / ImportError when the world is not built. Reads only the captions array."""
    from ...world import WorldConfig

    scenes = Path(WorldConfig().cache_dir) / "scenes"
    for split in ("test", "gen_train", "eval_train"):
        f = scenes / f"{split}.npz"
        if f.is_file():
            try:
                with np.load(f) as z:
                    caps = np.unique(z["captions"])
            except Exception as e:  # corrupt file: let the caller fall back
                raise PersonifyError(f"{f}: unreadable ({str(e)[:80]})") from None
            idx = np.random.default_rng(seed).permutation(len(caps))[:n]
            return [str(caps[i]) for i in sorted(idx)]
    raise PersonifyError(f"no emoji world scenes in {scenes}")


def regularization_captions(source: str | None, n: int = 1000, seed: int = 0) -> tuple[list[str], str]:
    """Captions from a text file (one per line), else the emoji world, else the built-in list."""
    if source:
        p = Path(source).expanduser()
        if not p.is_file():
            raise PersonifyError(f"{p}: caption file not found; pass a text file with one caption per line")
        caps = [line.strip() for line in p.read_text().splitlines() if line.strip()]
        if not caps:
            raise PersonifyError(f"{p}: no captions in the file")
        return caps[:n], str(p)
    try:
        return world_captions(n, seed), "world"
    except (ImportError, PersonifyError, OSError) as e:
        warnings.warn(f"merge: emoji world captions unavailable ({str(e).splitlines()[0][:100]}); using {n} built-in generic captions")
        return builtin_captions(n, seed), "builtin"


# --- CLI ------------------------------------------------------------------------------------------
@dataclass
class MergeConfig(ModelSource):
    """`personify merge`: combine separately trained Custom Diffusion concepts into one (paper Eq. 4)."""

    concept: list[str] = field(default_factory=list, metadata={"help": "two or more Custom Diffusion concept files (same base model, distinct modifier tokens)"})
    out: str = field(default="merged.safetensors", metadata={"help": "path of the merged concept"})
    reg_captions: str | None = field(default=None, metadata={"help": "text file of regularization captions, one per line (default: the emoji world's captions, else a built-in list)"})
    num_reg_captions: int = field(default=1000, metadata={"help": "regularization captions used (paper: 1,000)"})
    ridge: float = field(default=1e-6, metadata={"help": "ridge added to C_regᵀC_reg, relative to its mean eigenvalue"})
    padding: bool = field(default=False, metadata={"help": "also constrain/regularize the padding positions of each prompt (default: BOS..EOS tokens only)"})
    save_precision: Literal["fp32", "fp16", "bf16"] = field(default="fp16", metadata={"help": "dtype of the merged concept"})
    seed: int = field(default=0, metadata={"help": "seed of the caption sample"})

    def __post_init__(self) -> None:
        if isinstance(self.concept, str):
            self.concept = [self.concept]
        check(len(self.concept) >= 2, f"merge needs at least two --concept files, got {len(self.concept)}")
        check(self.num_reg_captions >= 1, f"num_reg_captions must be >= 1, got {self.num_reg_captions}")
        check(self.ridge >= 0, f"ridge must be >= 0, got {self.ridge}")


def main(cfg: MergeConfig) -> int:
    pipe = cfg.load_pipeline()
    caps, source = regularization_captions(cfg.reg_captions, cfg.num_reg_captions, cfg.seed)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.save_precision]
    path = merge_concepts(pipe, cfg.concept, caps, cfg.out, ridge=cfg.ridge, padding=cfg.padding, dtype=dtype)
    from ...artifact import read_concept

    m = read_concept(path)[1]
    print(f"merged {len(cfg.concept)} concepts ({', '.join(m['tokens'])}) with {len(caps)} {source} captions in "
          f"{m['metrics']['merge_seconds']:.2f}s -> {path}")
    print(f"prompt with: {m['instance_prompt']}")
    return 0


__all__ = ["MergeConfig", "main", "merge_concepts", "gram", "merge_projection", "merge_weights", "reg_change", "token_features", "regularization_captions",
           "builtin_captions"]
