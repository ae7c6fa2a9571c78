"""Custom Diffusion (Kumari et al., "Multi-Concept Customization of Text-to-Image Diffusion",
CVPR 2023): fine-tune only the key and value projections W_k, W_v of every cross-attention layer
(`attn2.to_k`, `attn2.to_v` in diffusers' transformer blocks) plus the embedding of a new modifier
token V* ("photo of a V* dog"), with the prior-preservation loss on ~200 real images retrieved by
caption similarity, and a rescale augmentation with a masked loss.

Why K/V: the text features c enter the UNet only through W_k c and W_v c, and these weights change
most during fine-tuning (paper Fig. 2); they are ~2-3% of the UNet, so the artifact is small and
several concepts can be merged in closed form (`merge.py`).

Parameters are selected, not forked: the UNet stays a stock UNet2DConditionModel and only the
chosen weights get requires_grad. The embedding trains as in Textual Inversion: the whole matrix is
the optimizer's parameter, gradients of all other rows are masked to zero and the other rows are
restored after every step (weight decay would move them).
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from ...errors import PersonifyError
from ...tokens import RowParameter, add_placeholder_tokens, rare_identifier
from .. import register
from ..base import Method, Prior, prefixed, unprefixed
from .augment import augment_batch
from .config import CustomDiffusionConfig

TOKEN_PREFIX = "token"
UNET_PREFIX = "unet"


def cross_attention_parameters(unet, freeze_model: str = "crossattn_kv") -> dict[str, torch.nn.Parameter]:
    """{name: parameter} of what Custom Diffusion trains, in module order: `attn2.to_k/to_v` weights
    (and biases, if any) for 'crossattn_kv'; every parameter of `attn2` for 'crossattn'."""
    out: dict[str, torch.nn.Parameter] = {}
    for name, module in unet.named_modules():
        if not name.endswith("attn2"):
            continue
        for pname, p in module.named_parameters():
            if freeze_model == "crossattn" or pname.split(".")[0] in ("to_k", "to_v"):
                out[f"{name}.{pname}"] = p
    if not out:
        raise PersonifyError("this UNet has no cross-attention layers (attn2); Custom Diffusion needs a text-conditioned UNet")
    return out


def unet_param(unet, name: str) -> torch.Tensor:
    """The parameter `name` of the UNet, looking through a peft LoRA wrapper (`base_layer`)."""
    mod_path, pname = name.rsplit(".", 1)
    try:
        mod = unet.get_submodule(mod_path)
    except AttributeError:
        raise PersonifyError(f"Custom Diffusion weight {name!r} does not exist in this UNet; load the base model the concept was trained on") from None
    mod = getattr(mod, "base_layer", mod)
    p = getattr(mod, pname, None)
    if not isinstance(p, torch.Tensor):
        raise PersonifyError(f"Custom Diffusion weight {name!r} does not exist in this UNet; load the base model the concept was trained on")
    return p


def add_tokens(tokenizer, text_encoder, names: list[str], vectors: torch.Tensor) -> list[int]:
    """Add `names` to the vocabulary with the given embedding rows (N, D); the caller's RNG is kept
    (the resize initialises new rows randomly before we overwrite them)."""
    emb = text_encoder.get_input_embeddings().weight
    if vectors.dim() != 2 or vectors.shape != (len(names), emb.shape[1]):
        raise PersonifyError(f"token embeddings of shape {tuple(vectors.shape)} do not fit this text encoder (width {emb.shape[1]}); use the base model they were trained on")
    if tokenizer.add_tokens(names) != len(names):
        raise PersonifyError(f"modifier token(s) {names} clash with the tokenizer vocabulary; retrain with another --modifier-token")
    ids = tokenizer.convert_tokens_to_ids(names)
    with torch.random.fork_rng(devices=[]):
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        emb[ids] = vectors.to(emb.device, emb.dtype)
    return ids


@register
class CustomDiffusion(Method):
    """Custom Diffusion: cross-attention K/V + a modifier token; concepts merge in closed form."""

    name = "custom_diffusion"
    Config = CustomDiffusionConfig
    text_frozen = False  # the modifier embedding changes every step
    uses_vae = True  # size augmentation encodes blank canvases (`_canvas`)

    def __init__(self, pipe, config: CustomDiffusionConfig):
        super().__init__(pipe, config)
        self.tokens = config.tokens
        taken = {t for c in getattr(pipe, "personify_concepts", []) for t in (c.get("tokens") or [])}
        clash = [t for t in self.tokens if t in taken]
        if clash:
            raise PersonifyError(f"modifier token {clash[0]!r} is already used by an applied concept; pass another --modifier-token")
        tok = pipe.tokenizer
        inits: list[str] = []
        for i in range(len(self.tokens)):
            inits.append(config.initializer[i] if config.initializer else rare_identifier(tok, exclude=tuple(taken | set(inits))))
        self.initializers = inits
        self.prompts = [config.instance_template.format(modifier=t, class_word=w) for t, w in zip(self.tokens, config.class_word)]
        self.ids: list[int] = []
        self.prior_source = "none"
        self._prior: Prior | None = None
        self._canvases: dict[tuple, torch.Tensor] = {}

    # --- set-up -------------------------------------------------------------------------------
    def _embedding(self) -> torch.nn.Parameter:
        return self.pipe.text_encoder.get_input_embeddings().weight

    def setup(self) -> None:
        super().setup()
        te, unet = self.pipe.text_encoder, self.pipe.unet
        for t, init in zip(self.tokens, self.initializers):
            self.ids += add_placeholder_tokens(self.pipe.tokenizer, te, t, 1, init)
        # the modifier rows as their own (N, D) parameter: AdamW no longer walks the whole (V, D) matrix
        self.rows = RowParameter(te, self.ids)
        self._unet_params = cross_attention_parameters(unet, self.config.freeze_model)
        for p in self._unet_params.values():
            p.requires_grad_(True)
        unet.train()
        te.train()

    def captions(self, sidecar: str | None) -> list[str]:
        """No sidecar: the instance prompt. A sidecar may be a full caption naming a modifier token
        ("<new2> teapot on a table") or `[V]` (one concept), or just a modifier token, which selects
        that concept's instance prompt — how joint training assigns images to concepts."""
        text = (sidecar or "").strip()
        if text in self.tokens:
            return [self.prompts[self.tokens.index(text)]]
        if text and any(t in text for t in self.tokens):
            return [text]
        if text and "[V]" in text:
            if len(self.tokens) > 1:
                raise PersonifyError(f"sidecar caption {text!r}: '[V]' is ambiguous with several concepts; name the modifier token ({', '.join(self.tokens)}) instead")
            return [text.replace("[V]", self.tokens[0])]
        if len(self.tokens) == 1:
            return [self.prompts[0]]
        raise PersonifyError(
            f"joint training of {len(self.tokens)} concepts: every image needs a sidecar NAME.txt naming its concept "
            f"({' or '.join(self.tokens)}), e.g. '{self.tokens[0]}'; build the folder with "
            "personify.methods.custom_diffusion.join_concept_folders"
        )

    # --- regularization images ----------------------------------------------------------------
    def prior(self) -> Prior | None:
        """The user's class images, else the paper's retrieved real images (written to a cache folder),
        else None folder: the loop generates class images with the frozen model, as for DreamBooth."""
        if self.config.prior_weight <= 0:
            return None
        if self._prior is None:
            self._prior = self._prepare_prior()
        return self._prior

    def _prepare_prior(self) -> Prior:
        cfg = self.config
        prompts = cfg.class_prompts()
        if cfg.class_images:
            self.prior_source = "user"
            return Prior(prompts, Path(cfg.class_images))
        if cfg.retrieval:
            folder = self._retrieve(prompts)
            if folder is not None:
                self.prior_source = "retrieved"
                return Prior(prompts, folder)
        self.prior_source = "generated"
        return Prior(prompts)

    def _retrieve(self, prompts: list[str]) -> Path | None:
        from ...models.loading import mini_model_path
        from .retrieval import PipeTextFeatures, folder_pool, retrieve_to_folder, world_pool

        cfg, n = self.config, self.config.num_class_images
        fallback = f"falling back to {n} class images generated by the frozen model"
        try:
            if cfg.retrieval_pool:
                pool = folder_pool(cfg.retrieval_pool)
            elif str(getattr(self.pipe, "personify_source", "")) in ("mini", str(mini_model_path())):  # load_pipeline records "mini"
                pool = world_pool("gen_train")
            else:
                warnings.warn(f"custom_diffusion: no retrieval pool for this base model (pass --retrieval-pool DIR of NAME.png + NAME.txt); {fallback}")
                return None
        except (ImportError, PersonifyError, OSError) as e:
            warnings.warn(f"custom_diffusion: retrieval pool unavailable ({str(e).splitlines()[0] if str(e) else type(e).__name__}); {fallback}")
            return None
        if cfg.retrieval_clip:
            from ...evaluation.encoders import load_clip

            encoder, encoder_id = load_clip(cfg.retrieval_clip), f"clip:{Path(cfg.retrieval_clip).expanduser().resolve()}"
        else:
            encoder, encoder_id = PipeTextFeatures(self.pipe.tokenizer, self.pipe.text_encoder), f"pipe:{self.pipe.personify_base_hash}"
        try:
            folder, counts = retrieve_to_folder(pool, prompts, encoder, encoder_id, n, cfg.retrieval_threshold)
        except (ImportError, PersonifyError, OSError) as e:
            warnings.warn(f"custom_diffusion: retrieval pool unavailable ({str(e).splitlines()[0] if str(e) else type(e).__name__}); {fallback}")
            return None
        if min(counts) == 0:
            empty = prompts[counts.index(0)]
            warnings.warn(f"custom_diffusion: no pool caption has similarity > {cfg.retrieval_threshold} to {empty!r}; lower --retrieval-threshold or {fallback}")
            return None
        if min(counts) < n:
            warnings.warn(f"custom_diffusion: only {min(counts)} pool captions pass similarity > {cfg.retrieval_threshold} (wanted {n}); using those")
        return folder

    # --- training -----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.rows.param, *self._unet_params.values()]

    def encode_text(self, batch: dict[str, Any]) -> torch.Tensor:
        with self.rows.swapped_in():
            return super().encode_text(batch)

    def _canvas(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latent of a mid-grey image (0 in [-1, 1]) at the batch's size."""
        key = (tuple(latents.shape[-2:]), latents.device, latents.dtype)
        if key not in self._canvases:
            vae, f = self.pipe.vae, self.pipe.vae_scale_factor
            h, w = latents.shape[-2:]
            p = next(vae.parameters())
            with torch.no_grad():
                mean = vae.encode(torch.zeros((1, 3, h * f, w * f), device=p.device, dtype=p.dtype)).latent_dist.mean
            self._canvases[key] = (mean[0].float() * vae.config.scaling_factor).to(latents.device, latents.dtype)
        return self._canvases[key]

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.config.augment:
            lat, mask, prompts = augment_batch(batch["latents"], batch["noise"], batch["prompts"], batch["is_prior"], self._canvas(batch["latents"]))
            tok = self.pipe.tokenizer
            ids = tok(prompts, padding="max_length", truncation=True, max_length=tok.model_max_length, return_tensors="pt").input_ids
            batch = {k: v for k, v in batch.items() if k != "encoder_hidden_states"}
            batch.update(latents=lat, mask=mask, prompts=prompts, input_ids=ids.to(lat.device))
        return super().loss(batch)

    def after_step(self) -> None:
        self.rows.sync()

    # --- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        emb = self._embedding().detach()
        out = {f"{TOKEN_PREFIX}.{t}": emb[i].clone() for t, i in zip(self.tokens, self.ids)}
        out.update(prefixed(UNET_PREFIX, {k: p.detach().clone() for k, p in self._unet_params.items()}))
        return out

    def load(self, state: dict[str, torch.Tensor]) -> None:
        vec = torch.stack([_token_vector(state, t, "checkpoint") for t in self.tokens])
        emb = self._embedding()
        with torch.no_grad():
            emb[self.ids] = vec.to(emb.device, emb.dtype)
        if hasattr(self, "rows"):
            self.rows.set(vec)
        _copy_unet(self.pipe.unet, unprefixed(UNET_PREFIX, state), "checkpoint")

    def metadata(self) -> dict[str, Any]:
        cw = self.config.class_word
        unet_total = sum(p.numel() for p in self.pipe.unet.parameters())
        trained = sum(p.numel() for p in self._unet_params.values()) if hasattr(self, "_unet_params") else 0
        joint = self.prompts[0] + "".join(f" and a {t} {w}" for t, w in zip(self.tokens[1:], cw[1:]))
        return {
            "tokens": list(self.tokens), "class_word": cw[0] if len(cw) == 1 else list(cw), "instance_prompt": joint,
            "concepts": [{"token": t, "class_word": w, "instance_prompt": p} for t, w, p in zip(self.tokens, cw, self.prompts)],
            "freeze_model": self.config.freeze_model, "prior_source": self.prior_source,
            "unet_fraction": trained / unet_total if unet_total else 0.0,
        }

    @classmethod
    def apply(cls, pipe, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        tokens = list(meta.get("tokens") or [])
        for other in pipe.personify_concepts:
            shared = set(other.get("tokens") or []) & set(tokens)
            if shared:
                raise PersonifyError(
                    f"{meta['path']}: modifier token {sorted(shared)[0]!r} is also used by {other['path']}; "
                    "retrain one concept with another --modifier-token"
                )
        for other in pipe.personify_concepts:
            if other["method"] == cls.name:
                raise PersonifyError(
                    f"{meta['path']}: {other['path']} already set the cross-attention K/V weights and a second Custom Diffusion "
                    f"concept would overwrite them; merge them into one concept first: personify merge --concept {other['path']} {meta['path']} --out merged.safetensors"
                )
            if other["method"] == "dreambooth":
                warnings.warn(f"{meta['path']}: replaces the cross-attention K/V weights of DreamBooth concept {other['path']}")
        vocab = pipe.tokenizer.get_vocab()
        for t in tokens:
            if t in vocab or t + "</w>" in vocab:
                raise PersonifyError(f"{meta['path']}: modifier token {t!r} is already in the tokenizer vocabulary; retrain with another --modifier-token")
        unet_state = unprefixed(UNET_PREFIX, state)
        _check_unet(pipe.unet, unet_state, meta["path"])  # validate everything before changing anything
        vec = torch.stack([_token_vector(state, t, meta["path"]) for t in tokens])
        add_tokens(pipe.tokenizer, pipe.text_encoder, tokens, vec)
        _copy_unet(pipe.unet, unet_state, meta["path"])


def _token_vector(state: dict[str, torch.Tensor], token: str, source: str) -> torch.Tensor:
    v = state.get(f"{TOKEN_PREFIX}.{token}")
    if v is None:
        raise PersonifyError(f"{source}: no embedding for modifier token {token!r}; the file is not a complete Custom Diffusion concept")
    return v.reshape(-1)


def _check_unet(unet, state: dict[str, torch.Tensor], source: str) -> None:
    if not state:
        raise PersonifyError(f"{source}: no cross-attention weights; the file is not a complete Custom Diffusion concept")
    for k, v in state.items():
        p = unet_param(unet, k)
        if p.shape != v.shape:
            raise PersonifyError(f"{source}: weight {k} has shape {tuple(v.shape)}, this UNet's is {tuple(p.shape)}; load the base model it was trained on")


def _copy_unet(unet, state: dict[str, torch.Tensor], source: str) -> None:
    _check_unet(unet, state, source)
    with torch.no_grad():
        for k, v in state.items():
            p = unet_param(unet, k)
            p.copy_(v.to(p.device, p.dtype))


def join_concept_folders(folders: list[str | Path], tokens: list[str], out: str | Path) -> Path:
    """One `--images` folder for joint training: copies each concept's photos into `out` as
    `c{i}_NAME` with a sidecar `c{i}_NAME.txt` holding that concept's modifier token (the loop reads
    one folder; the sidecar tells the method which concept an image shows). An existing sidecar
    caption that names the token is kept."""
    from ...data.images import find_images

    if len(folders) != len(tokens):
        raise PersonifyError(f"give one image folder per modifier token ({len(tokens)} tokens, {len(folders)} folders)")
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for i, (folder, tok) in enumerate(zip(folders, tokens)):
        for p in find_images(Path(folder)):
            dst = out / f"c{i}_{p.name}"
            shutil.copyfile(p, dst)
            side = p.with_suffix(".txt")
            cap = side.read_text().strip() if side.is_file() else ""
            dst.with_suffix(".txt").write_text((cap if tok in cap else tok) + "\n")
    return out
