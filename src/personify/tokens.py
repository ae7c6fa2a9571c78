"""Identifier tokens: the rare "[V]" of DreamBooth and the new placeholders of Textual Inversion.

Rule for the automatic DreamBooth identifier (Ruiz et al. 2023, Sec. 3.2: "rare tokens" with weak
priors): a whole-word token (`</w>`) of CLIP's BPE vocabulary whose id is >= 40,000 — BPE merges are
learned in order of frequency, so the last ~9,000 of 49,408 are the rarest strings in CLIP's
training text — made of exactly 3 lowercase ASCII letters with no vowel (a, e, i, o, u, y), so it is
not an English word. Candidates are taken rarest first. `sks`, the community's habit, passes.

A "common word" (warned about when the user picks one) is a whole-word token in the first 10,000
merges: those are the most frequent strings CLIP saw, and they come with strong priors.
"""
from __future__ import annotations

import re
import warnings
from contextlib import contextmanager

from .errors import PersonifyError

RARE_MIN_ID = 40_000
COMMON_MAX_ID = 10_000
VOWELS = set("aeiouy")
BLOCKED = {"fck"}  # rare but offensive


def _whole_word_id(tokenizer, word: str) -> int | None:
    return tokenizer.get_vocab().get(word.lower() + "</w>")


def rare_candidates(tokenizer) -> list[str]:
    out = []
    for tok, i in tokenizer.get_vocab().items():
        w = tok[:-4]
        if tok.endswith("</w>") and i >= RARE_MIN_ID and len(w) == 3 and w.isascii() and w.isalpha() and w.islower() and not set(w) & VOWELS and w not in BLOCKED:
            out.append((i, w))
    return [w for _, w in sorted(out, reverse=True)]


def rare_identifier(tokenizer, exclude: tuple[str, ...] = ()) -> str:
    """The rarest candidate not in `exclude` (so several concepts get different identifiers)."""
    for w in rare_candidates(tokenizer):
        if w not in exclude:
            return w
    raise PersonifyError("no rare identifier left in the tokenizer vocabulary; pass --identifier")


def check_identifier(tokenizer, identifier: str) -> None:
    """Warn when the identifier is split into several tokens or is a common word."""
    ids = tokenizer(identifier, add_special_tokens=False).input_ids
    if len(ids) != 1:
        warnings.warn(f"identifier {identifier!r} is {len(ids)} tokens, not one; a single rare token learns faster")
    i = _whole_word_id(tokenizer, identifier)
    if i is not None and i < COMMON_MAX_ID:
        warnings.warn(
            f"identifier {identifier!r} is a common word (token id {i}); its prior leaks into your subject. "
            f"Try a rare one such as {rare_identifier(tokenizer)!r}"
        )


def add_placeholder_tokens(tokenizer, text_encoder, placeholder: str, num_vectors: int, initializer: str) -> list[int]:
    """Add `placeholder` (and `placeholder_1..` for extra vectors) to the vocabulary, initialised
    from the embedding of `initializer`. Returns the new token ids.

    A multi-token initializer ("race car", "stuffed animal": DreamBench has such class words) starts
    every vector from the mean of its tokens' embeddings, so that TI and Custom Diffusion work with
    any class word instead of refusing it."""
    names = [placeholder] + [f"{placeholder}_{i}" for i in range(1, num_vectors)]
    vocab = tokenizer.get_vocab()
    for n in names:
        if n in vocab or n + "</w>" in vocab:
            raise PersonifyError(f"placeholder token {n!r} is already in the vocabulary; choose another, e.g. '<my-{n.strip('<>')}>'")
    init_ids = tokenizer(initializer, add_special_tokens=False).input_ids
    if not init_ids:
        raise PersonifyError(f"initializer word {initializer!r} has no tokens; give a word such as the class noun")
    added = tokenizer.add_tokens(names)
    if added != len(names):
        raise PersonifyError(f"placeholder token {placeholder!r} clashes with an existing token; choose another")
    ids = tokenizer.convert_tokens_to_ids(names)
    text_encoder.resize_token_embeddings(len(tokenizer))
    emb = text_encoder.get_input_embeddings().weight
    with __import__("torch").no_grad():
        start = emb[init_ids].mean(0)  # (D,): the word's own row when it is one token
        for i in ids:
            emb[i] = start.clone()
    return ids


def expand_prompt(tokenizer, prompt: str) -> str:
    """Expand every multi-vector placeholder the tokenizer knows ('<x>' with '<x>_1', ...) unless the
    prompt already spells the vectors out (as diffusers' `maybe_convert_prompt` does)."""
    added = getattr(tokenizer, "added_tokens_encoder", {}) or {}
    for tok in added:
        if f"{tok}_1" not in added or tok not in prompt:
            continue
        n = 1
        while f"{tok}_{n}" in added:
            n += 1
        full = " ".join([tok] + [f"{tok}_{i}" for i in range(1, n)])
        if full not in prompt:
            prompt = re.sub(rf"{re.escape(tok)}(?!_\d)", full, prompt)
    return prompt


def expand_placeholder(prompt: str, placeholder: str, num_vectors: int) -> str:
    """'a <cat-toy>' -> 'a <cat-toy> <cat-toy>_1 ...' for multi-vector embeddings."""
    if num_vectors <= 1:
        return prompt
    full = " ".join([placeholder] + [f"{placeholder}_{i}" for i in range(1, num_vectors)])
    return prompt.replace(placeholder, full)


class RowParameter:
    """Train some rows of the token-embedding matrix as their own (N, D) parameter (Textual Inversion's
    placeholders, Custom Diffusion's modifier tokens).

    Unlike the reference implementations, which hand the whole matrix to the optimizer, mask the other
    rows' gradients and restore them after every step, the optimizer, gradient clipping and weight
    decay see only these N·D numbers, not the whole (V, D) matrix (49,408 x 768 on SD): a step skips the AdamW update, the
    gradient mask and the restore over every row, and the optimizer state is N·D instead of 2·V·D.
    The learned rows move exactly as before — AdamW is elementwise and the other rows' gradients were
    masked to zero — and the other rows cannot move at all. Inside `swapped_in()` a forward hook makes
    the embedding lookup return these rows for their ids, so gradients reach them; `sync()` (after
    every step) copies them into the matrix, which thus always holds the current vectors for
    generation, validation and saving.
    """

    def __init__(self, text_encoder, ids: list[int]):
        import torch

        self.text_encoder, self.ids = text_encoder, list(ids)
        w = self.weight
        self.param = torch.nn.Parameter(w[self.ids].detach().clone())  # (N, D)
        self.index = torch.full((w.shape[0],), -1, dtype=torch.long, device=w.device)  # token id -> row of param, or -1
        self.index[self.ids] = torch.arange(len(self.ids), device=w.device)

    @property
    def weight(self):
        return self.text_encoder.get_input_embeddings().weight  # (V, D)

    @contextmanager
    def swapped_in(self):
        handle = self.text_encoder.get_input_embeddings().register_forward_hook(self._swap)
        try:
            yield
        finally:
            handle.remove()

    def _swap(self, module, args, out):
        import torch

        pos = self.index[args[0]]  # (B, L)
        return torch.where((pos >= 0)[..., None], self.param[pos.clamp_min(0)].to(out.dtype), out)

    def sync(self) -> None:
        import torch

        with torch.no_grad():
            self.weight[self.ids] = self.param.to(self.weight.dtype)

    def set(self, vec) -> None:
        import torch

        with torch.no_grad():
            self.param.copy_(vec.to(self.param.device, self.param.dtype))
        self.sync()

    def rows(self):
        return self.param.detach().clone()  # (N, D)
