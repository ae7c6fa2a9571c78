"""SuTI-style apprentice (Chen et al., NeurIPS 2023): a UNet that reads K demonstrations in-context.

Architecture (nothing of the base UNet is forked or copied):

* **Demo encoder = the UNet's own down path** (shared weights). Each demo latent (K, C, h, w) is
  noised to a fixed small level `t_demo` with fixed noise (or kept clean, `t_demo=0`), then run
  through `conv_in`, the time embedding at `t_demo`, and every down block with the demo caption's
  text states as cross-attention context. Forward hooks collect the output of every transformer
  (`Transformer2DModel`) inside the down blocks: level l gives (K, C_l, h_l, w_l), flattened and
  concatenated over demos to tokens (1, K*h_l*w_l, C_l).
* **Demo attention in every cross-attention block.** Each `attn2` of the UNet (down, mid, up) gets
  a `DemoAttention`: LayerNorm on the demo tokens, a diffusers `Attention` (query = the block's
  normed hidden states, keys/values = the demo tokens of the level whose channel count matches,
  else the nearest one; the k/v projections map C_src -> C_q), output projection **zero-initialised**,
  so at init the apprentice is bit-identical to the base UNet. It is wired in with a custom
  attention processor (`DemoAttnProcessor`) set via `unet.set_attn_processor`; the processor
  computes the base cross-attention with the original processor and adds the demo attention.
* The added modules live in `Apprentice.demo_layers` (an `nn.ModuleDict`); the UNet's own
  `state_dict()` is unchanged. `Apprentice.adapter_state_dict()` is what a checkpoint stores.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from ..errors import PersonifyError


@dataclass
class DemoContext:
    """Encoded demonstrations: tokens[l] is (Bc, T_l, C_l), Bc = 1 (shared) or the batch size."""
    tokens: list[torch.Tensor]
    n_demos: int
    meta: dict = field(default_factory=dict)

    def to(self, *args, **kw) -> "DemoContext":
        return DemoContext([t.to(*args, **kw) for t in self.tokens], self.n_demos, self.meta)


class _State:
    """Mutable holder shared by all processors: the demo context of the current UNet call."""

    def __init__(self) -> None:
        self.context: DemoContext | None = None


class DemoAttention(nn.Module):
    """Attention from a block's hidden states (B, N, C_q) to demo tokens (B, T, C_src)."""

    def __init__(self, query_dim: int, source_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.norm_src = nn.LayerNorm(source_dim)
        self.attn = Attention(query_dim=query_dim, cross_attention_dim=source_dim, heads=heads, dim_head=dim_head,
                              bias=False, out_bias=True, processor=AttnProcessor2_0())
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[0] != hidden.shape[0]:
            if tokens.shape[0] != 1:
                raise ValueError(f"demo tokens batch {tokens.shape[0]} does not fit hidden batch {hidden.shape[0]}")
            tokens = tokens.expand(hidden.shape[0], -1, -1)
        src = self.norm_src(tokens.to(hidden.dtype))
        return self.attn(hidden, encoder_hidden_states=src)


class DemoAttnProcessor:
    """Wraps an attn2's original processor: out = base(attn, h, text) + demo_attn(h, demo tokens)."""

    def __init__(self, base, module: DemoAttention, level: int, state: _State):
        self.base, self.module, self.level, self.state = base, module, level, state

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        ctx = self.state.context
        if ctx is None:
            return out
        if hidden_states.ndim != 3:  # transformer blocks always pass (B, N, C)
            raise ValueError(f"demo attention expects (B, N, C) hidden states, got {tuple(hidden_states.shape)}")
        return out + self.module(hidden_states, ctx.tokens[self.level])


def _key(name: str) -> str:
    return name.replace(".", "__")


class Apprentice(nn.Module):
    """A UNet2DConditionModel plus demo attention layers; see the module docstring.

    `alphas_cumprod` (from the noise scheduler) is needed to noise demos to `t_demo`; with `None`
    or `t_demo=0` the demos are encoded clean (still with the time embedding of `t_demo`).
    """

    def __init__(self, unet, alphas_cumprod: torch.Tensor | None = None, t_demo: int = 50, demo_noise_seed: int = 0,
                 heads: int | None = None, dim_head: int | None = None):
        super().__init__()
        if any(isinstance(p, DemoAttnProcessor) for p in unet.attn_processors.values()):
            raise PersonifyError("this UNet already carries an apprentice; reuse it (load_apprentice) or call detach_from_unet() first")
        self.unet = unet
        self.t_demo, self.demo_noise_seed = int(t_demo), int(demo_noise_seed)
        self.register_buffer("alphas_cumprod", None if alphas_cumprod is None else alphas_cumprod.detach().float().clone(), persistent=False)
        self._state = _State()
        # Demo encoder levels: every transformer inside the down blocks.
        self.level_modules: list[nn.Module] = []
        self.level_dims: list[int] = []
        for block in unet.down_blocks:
            for tr in getattr(block, "attentions", None) or []:
                self.level_modules.append(tr)
                self.level_dims.append(int(tr.config.in_channels))
        if not self.level_modules:
            raise PersonifyError("this UNet has no cross-attention down blocks; the apprentice needs at least one")
        self.demo_layers = nn.ModuleDict()
        self.layer_level: dict[str, int] = {}
        procs = {}
        for name, proc in unet.attn_processors.items():
            mod_name = name[: -len(".processor")]
            attn = unet.get_submodule(mod_name)
            if mod_name.endswith("attn2") and attn.is_cross_attention:
                qdim = attn.to_q.in_features
                level = self._pick_level(qdim)
                h = heads or attn.heads
                dh = dim_head or max(1, qdim // h)
                m = DemoAttention(qdim, self.level_dims[level], h, dh)
                self.demo_layers[_key(mod_name)] = m
                self.layer_level[mod_name] = level
                procs[name] = DemoAttnProcessor(proc, m, level, self._state)
            else:
                procs[name] = proc
        unet.set_attn_processor(procs)
        self.demo_layers.to(device=unet.device, dtype=unet.dtype)
        if self.alphas_cumprod is not None:
            self.alphas_cumprod = self.alphas_cumprod.to(unet.device)  # stays float32

    def _pick_level(self, qdim: int) -> int:
        """Same channel count if a level has it (the deepest such), else the nearest channel count."""
        same = [i for i, d in enumerate(self.level_dims) if d == qdim]
        if same:
            return same[-1]
        return min(range(len(self.level_dims)), key=lambda i: (abs(self.level_dims[i] - qdim), -i))

    # ---- demo encoder -------------------------------------------------------------------------
    def _noised(self, z: torch.Tensor) -> torch.Tensor:
        if self.alphas_cumprod is None or self.t_demo <= 0:
            return z
        g = torch.Generator().manual_seed(self.demo_noise_seed)
        eps = torch.randn(z.shape, generator=g).to(z.device, z.dtype)
        ab = self.alphas_cumprod[self.t_demo].to(z.device, z.dtype)
        return ab.sqrt() * z + (1 - ab).sqrt() * eps

    def encode_demos(self, demo_latents: torch.Tensor, demo_text_states: torch.Tensor) -> DemoContext:
        """demo_latents (K, C, h, w) (VAE-scaled), demo_text_states (K, L, D) -> DemoContext.

        tokens[l]: (1, K*h_l*w_l, C_l), one per down-block transformer. Differentiable (no no_grad)."""
        if demo_latents.ndim != 4 or demo_text_states.ndim != 3 or demo_latents.shape[0] != demo_text_states.shape[0]:
            raise PersonifyError(f"demos: need latents (K, C, h, w) and text states (K, L, D) with the same K, got "
                                 f"{tuple(demo_latents.shape)} and {tuple(demo_text_states.shape)}")
        unet = self.unet
        k = demo_latents.shape[0]
        x = self._noised(demo_latents.to(unet.device, unet.dtype))
        text = demo_text_states.to(unet.device, unet.dtype)
        t = torch.full((k,), self.t_demo, device=x.device, dtype=torch.long)
        emb = unet.time_embedding(unet.get_time_embed(sample=x, timestep=t), None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        feats: list[torch.Tensor | None] = [None] * len(self.level_modules)

        def hook(i):
            def f(_m, _inp, out):
                feats[i] = out[0] if isinstance(out, tuple) else out.sample
            return f

        handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(self.level_modules)]
        saved, self._state.context = self._state.context, None  # plain UNet while encoding demos
        try:
            h = unet.conv_in(x)
            for block in unet.down_blocks:
                if getattr(block, "has_cross_attention", False):
                    h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=text)
                else:
                    h, _ = block(hidden_states=h, temb=emb)
        finally:
            for hd in handles:
                hd.remove()
            self._state.context = saved
        tokens = [f.permute(0, 2, 3, 1).reshape(1, -1, f.shape[1]) for f in feats]  # (1, K*h*w, C)
        return DemoContext(tokens, k)

    # ---- denoising ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def demos(self, context: DemoContext | None):
        """Within this block every UNet call attends to `context` (None: plain base UNet)."""
        saved, self._state.context = self._state.context, context
        try:
            yield
        finally:
            self._state.context = saved

    def forward(self, x: torch.Tensor, t, cond: torch.Tensor, context: DemoContext | None) -> torch.Tensor:
        with self.demos(context):
            return self.unet(x, t, encoder_hidden_states=cond).sample

    def denoiser(self, context: DemoContext | None):
        """`model(x, t, cond)` for `personify.sampling.sample`/`cfg_denoiser`. Every row of the batch
        (incl. both halves of a CFG batch) sees the same demos: SuTI conditions both branches."""

        def model(x, t, cond):
            return self(x, t, cond, context)

        return model

    def adapter_parameters(self):
        return self.demo_layers.parameters()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.demo_layers.state_dict().items()}

    def load_adapter_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        try:
            missing, unexpected = self.demo_layers.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # same names, other shapes: another base model
            missing, unexpected = [str(e).split("\n")[1].strip()[:120]], []
        if missing or unexpected:
            raise PersonifyError(f"apprentice weights do not fit this UNet (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]}); "
                                 "use the base model they were trained on")

    def detach_from_unet(self) -> None:
        """Restore the UNet's original processors (the base model again)."""
        self.unet.set_attn_processor({n: (p.base if isinstance(p, DemoAttnProcessor) else p) for n, p in self.unet.attn_processors.items()})
