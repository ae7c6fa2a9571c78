"""Textual Inversion (Gal et al. 2023): find new word embeddings v* for a placeholder S* such that

    v* = argmin_v E[ ‖ε − ε_θ(z_t, t, c_θ(y(S*)))‖² ]

with the UNet and the whole text encoder frozen; y runs over neutral templates ("a photo of a S*",
...). Only the placeholder's rows of the token-embedding matrix train, as their own (N, D) parameter
swapped into the embedding lookup (`tokens.RowParameter`): the optimizer, clipping and weight decay
see those rows only, not the whole matrix the reference implementation optimizes (and masks and
restores) every step — the same update of the learned rows for a fraction of the work and memory.
The artifact is the learned vectors, `{placeholder: (N, D)}` — a few KB.
"""
from __future__ import annotations

from typing import Any

import torch

from ...errors import PersonifyError
from ...tokens import RowParameter, add_placeholder_tokens, expand_placeholder
from .. import register
from ..base import Method
from ..dreambooth.method import sidecar_caption
from .config import TextualInversionConfig

OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of my {}", "a close-up photo of a {}", "a bright photo of the {}", "a dark photo of the {}",
    "a good photo of a {}", "a photo of one {}", "a photo of the small {}", "a photo of the large {}",
    "a blurry photo of a {}", "a clean photo of the {}", "a rendition of the {}", "a picture of a {}",
    "an image of the {}", "a cropped picture of a {}", "a snapshot of the {}", "a low-angle photo of a {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a picture in the style of {}", "a close-up painting in the style of {}",
    "a bright painting in the style of {}", "a dark painting in the style of {}", "a good painting in the style of {}",
    "a small painting in the style of {}", "a large painting in the style of {}", "an illustration in the style of {}",
    "an artwork in the style of {}", "a sketch in the style of {}", "a drawing in the style of {}",
)


def placeholder_names(placeholder: str, num_vectors: int) -> list[str]:
    """The tokens of a placeholder: '<x>', '<x>_1', ... (the layout diffusers and A1111 use)."""
    return expand_placeholder(placeholder, placeholder, num_vectors).split(" ")


@register
class TextualInversion(Method):
    """Textual Inversion: learn new token embedding(s) for a placeholder; model weights untouched."""

    name = "textual_inversion"
    Config = TextualInversionConfig
    text_frozen = False  # the embedding rows change every step: tokenize and encode per step

    def __init__(self, pipe, config: TextualInversionConfig):
        super().__init__(pipe, config)
        self.placeholder = config.token
        self.names = placeholder_names(self.placeholder, config.num_vectors)
        self.in_prompt = " ".join(self.names)  # what the placeholder becomes inside training captions
        self.templates = STYLE_TEMPLATES if config.what == "style" else OBJECT_TEMPLATES
        self.ids: list[int] = []

    # --- set-up -------------------------------------------------------------------------------
    def _embedding(self) -> torch.nn.Parameter:
        return self.pipe.text_encoder.get_input_embeddings().weight

    def setup(self) -> None:
        super().setup()
        te = self.pipe.text_encoder
        self.ids = add_placeholder_tokens(self.pipe.tokenizer, te, self.placeholder, self.config.num_vectors, self.config.init_word)
        self.rows = RowParameter(te, self.ids)

    def captions(self, sidecar: str | None) -> list[str]:
        options = [t.format(self.in_prompt) for t in self.templates]
        if sidecar and "[V]" in sidecar:
            return sidecar_caption(sidecar, self.in_prompt, options[0])
        return options

    # --- training -----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.rows.param]

    def encode_text(self, batch: dict[str, Any]) -> torch.Tensor:
        with self.rows.swapped_in():
            return super().encode_text(batch)

    def after_step(self) -> None:
        self.rows.sync()

    # --- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {self.placeholder: self.rows.rows()}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        vec = _vectors(state, "checkpoint", self._embedding().shape[1])
        _set_rows(self._embedding(), self.ids, vec)  # checks the count
        self.rows.set(vec)

    def metadata(self) -> dict[str, Any]:
        return {
            "tokens": self.names, "class_word": self.config.class_word, "placeholder": self.placeholder,
            "instance_prompt": self.templates[0].format(self.placeholder),
        }

    @classmethod
    def apply(cls, pipe, state: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        te, tok = pipe.text_encoder, pipe.tokenizer
        vec = _vectors(state, meta["path"], te.get_input_embeddings().weight.shape[1])
        placeholder = next(iter(state))
        for other in pipe.personify_concepts:
            if placeholder in (other.get("tokens") or []):
                raise PersonifyError(
                    f"{meta['path']}: placeholder {placeholder!r} is also used by {other['path']}; "
                    "retrain one concept with another --placeholder"
                )
        if placeholder in tok.get_vocab():
            raise PersonifyError(f"{meta['path']}: placeholder {placeholder!r} is already in the tokenizer vocabulary; retrain with another --placeholder")
        cfg = meta.get("config", {}).get("method", {})
        init = cfg.get("initializer") or cfg.get("class_word") or "a"
        ids = add_placeholder_tokens(tok, te, placeholder, vec.shape[0], init)
        _set_rows(te.get_input_embeddings().weight, ids, vec)


def _vectors(state: dict[str, torch.Tensor], source: str, dim: int) -> torch.Tensor:
    if len(state) != 1:
        raise PersonifyError(f"{source}: a Textual Inversion state holds exactly one placeholder, found {len(state)} tensors")
    vec = next(iter(state.values()))
    if vec.dim() == 1:
        vec = vec[None]
    if vec.dim() != 2 or vec.shape[1] != dim:
        raise PersonifyError(f"{source}: embedding of shape {tuple(vec.shape)} does not fit this text encoder (width {dim}); use the base model it was trained on")
    return vec


def _set_rows(emb: torch.Tensor, ids: list[int], vec: torch.Tensor) -> None:
    if vec.shape[0] != len(ids):
        raise PersonifyError(f"embedding has {vec.shape[0]} vectors but the placeholder has {len(ids)} tokens; match --num-vectors")
    with torch.no_grad():
        emb[ids] = vec.to(emb.dtype, copy=True).to(emb.device)
