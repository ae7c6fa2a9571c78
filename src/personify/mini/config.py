"""Typed, self-validating configs for the mini Stable Diffusion pretraining stages.

One dataclass per stage (``clip``, ``vae``, ``unet``, ``evaluators``). Every field carries
``metadata={"help": ...}`` so the CLI is generated from it (``personify mini train --stage S``).
Architecture sizes live in the stage config that trains the model; the defaults are the shipped
sizes (see docs/mini-model.md for the measurements behind them).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_RUN_ROOT = "/work/runs/mini"
SPLITS = ("gen_train", "eval_train", "test", "eval_seen")


def default_world_dir() -> Path:
    """``$PERSONIFY_WORLD`` or ``~/.cache/personify/world``."""
    env = os.environ.get("PERSONIFY_WORLD")
    return Path(env).expanduser() if env else Path("~/.cache/personify/world").expanduser()


def _h(text: str, **kw) -> dict:
    return {"help": text, **kw}


@dataclass
class StageConfig:
    """Fields shared by every stage: where data / run state live, how long and how often to save."""

    run_root: str = field(default=DEFAULT_RUN_ROOT, metadata=_h("Root of the run state; each stage writes <run_root>/<stage>/ (checkpoint.pt, model/, log.csv, tb/)."))
    world_dir: str = field(default="", metadata=_h("Emoji world root holding scenes/<split>.npz; empty = $PERSONIFY_WORLD or ~/.cache/personify/world."))
    split: str = field(default="gen_train", metadata=_h("Data split to train on (gen_train for the generator, eval_train for evaluators)."))
    seed: int = field(default=0, metadata=_h("Seed: initialisation and the per-step RNG (batch sampling, noise) derive from it."))
    batch_size: int = field(default=64, metadata=_h("Images per optimisation step."))
    lr: float = field(default=3e-4, metadata=_h("AdamW peak learning rate (linear warm-up, then constant, so runs can be extended)."))
    weight_decay: float = field(default=0.01, metadata=_h("AdamW weight decay."))
    warmup_steps: int = field(default=200, metadata=_h("Linear learning-rate warm-up steps."))
    decay_steps: int = field(default=0, metadata=_h("Decay the learning rate linearly to 0 over the last N steps before max_steps "
                                                    "(0 = constant). Cool a constant-lr run down in a branch: copy its stage folder "
                                                    "to another run_root, then max_steps = its step + N."))
    max_steps: int = field(default=1000, metadata=_h("Total optimisation steps of the stage; re-running with a larger value continues training."))
    time_budget_s: float = field(default=0.0, metadata=_h("Stop (after checkpointing) once this many seconds of this invocation have passed; 0 = no limit."))
    checkpoint_every_s: float = field(default=180.0, metadata=_h("Write an atomic checkpoint at least this often (seconds)."))
    log_every: int = field(default=20, metadata=_h("Log losses to CSV/TensorBoard every N steps."))
    threads: int = field(default=2, metadata=_h("torch.set_num_threads for this process (the dev machine has 2 cores)."))
    max_train_images: int = field(default=0, metadata=_h("Use only the first N images of the split (0 = all); for tests and smoke runs."))

    stage = "base"

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        for name in ("batch_size", "max_steps", "log_every", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "max_train_images", "decay_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not (0 < self.lr < 1):
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError("weight_decay must be >= 0")
        if self.time_budget_s < 0 or self.checkpoint_every_s <= 0:
            raise ValueError("time_budget_s must be >= 0 and checkpoint_every_s > 0")
        if not self.run_root:
            raise ValueError("run_root must be set")

    # -- paths -------------------------------------------------------------------------------
    @property
    def world(self) -> Path:
        return Path(self.world_dir).expanduser() if self.world_dir else default_world_dir()

    @property
    def stage_dir(self) -> Path:
        return Path(self.run_root).expanduser() / self.stage

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ClipConfig(StageConfig):
    """Contrastive CLIP (text + vision towers); its text tower is the generator's frozen text encoder."""

    max_length: int = field(default=32, metadata=_h("Tokenizer model_max_length = text max_position_embeddings (captions are short; SD uses 77)."))
    text_hidden: int = field(default=128, metadata=_h("Text transformer width (also the UNet cross_attention_dim)."))
    text_layers: int = field(default=4, metadata=_h("Text transformer layers."))
    text_heads: int = field(default=4, metadata=_h("Text attention heads."))
    vision_hidden: int = field(default=128, metadata=_h("Vision ViT width."))
    vision_layers: int = field(default=4, metadata=_h("Vision ViT layers."))
    vision_heads: int = field(default=4, metadata=_h("Vision attention heads."))
    patch_size: int = field(default=8, metadata=_h("Vision patch size (64 px -> 8x8 patches)."))
    projection_dim: int = field(default=128, metadata=_h("Shared embedding dimension."))
    image_size: int = field(default=64, metadata=_h("Image side in pixels."))
    caption_aware_targets: bool = field(default=True, metadata=_h("Treat batch items with identical captions as positives (soft InfoNCE targets) instead of false negatives."))

    stage = "clip"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.text_hidden % self.text_heads or self.vision_hidden % self.vision_heads:
            raise ValueError("hidden sizes must be divisible by the head counts")
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be divisible by patch_size")
        if not (8 <= self.max_length <= 77):
            raise ValueError("max_length must be in [8, 77]")
        if self.batch_size < 2:
            raise ValueError("contrastive training needs batch_size >= 2")


@dataclass
class VaeConfig(StageConfig):
    """AutoencoderKL, downsampling factor 8 (64x64x3 -> 8x8x4)."""

    block_out_channels: tuple[int, ...] = field(default=(32, 64, 128, 128), metadata=_h("Encoder/decoder widths; len 4 = 3 downsamplings = factor 8."))
    layers_per_block: int = field(default=1, metadata=_h("ResNet blocks per resolution."))
    latent_channels: int = field(default=4, metadata=_h("Latent channels (SD: 4)."))
    norm_num_groups: int = field(default=32, metadata=_h("GroupNorm groups; must divide every width."))
    kl_weight: float = field(default=1e-4, metadata=_h("Weight of the KL term (KL averaged per latent element)."))
    edge_weight: float = field(default=0.5, metadata=_h("Weight of an L1 loss on image gradients (sharper edges than plain L1)."))
    scale_samples: int = field(default=2048, metadata=_h("Images used to measure latent std for scaling_factor."))
    image_size: int = field(default=64, metadata=_h("Image side in pixels."))
    crop_size: int = field(default=64, metadata=_h("Train on random crops of this side; default = full images. Crops cost less per step, but AutoencoderKL is not purely convolutional (GroupNorm statistics, mid-block attention over the whole latent map): trained on 32 px crops, the 3,920-step VAE reconstructed full 64 px images at 18.85 dB and 2,300 more crop steps added 0.2 dB, while 600 steps on full images took it to 20.37 dB (docs/mini-model.md, session 10). Validation and scaling_factor use full images."))
    init_from: str = field(default="", metadata=_h("Start from this AutoencoderKL folder (e.g. the shipped VAE) instead of random weights; its architecture replaces the size fields above."))
    train_encoder: bool = field(default=True, metadata=_h("False = fine-tune the decoder only (needs init_from): the latent space and scaling_factor stay fixed, so a UNet trained on them stays valid, as with SD's ft-MSE/ft-EMA decoders."))
    grow_layers: int = field(default=0, metadata=_h("Add this many ResNet blocks per resolution to the init_from VAE, each starting as an identity (its last conv zeroed, as in Net2Net's deepening, Chen et al. 2016), so the grown VAE first computes exactly the old one. AutoencoderKL shares layers_per_block between encoder and decoder: with train_encoder False the encoder's new blocks stay identities and only the decoder gains capacity."))
    grow_latent: int = field(default=0, metadata=_h("Widen the init_from VAE's latent to this many channels (0 = keep): the old channels stay, the decoder first ignores the new ones, so training starts from exactly the old reconstructions (models.widen_latent). A UNet then needs as many in/out channels."))
    adv_weight: float = field(default=0.0, metadata=_h("Weight of a patch-GAN hinge loss on reconstructions, scaled adaptively as in VQGAN (Esser et al. 2021, eq. 7); 0 = off. The discriminator is trained here from scratch and never shipped."))
    adv_start: int = field(default=0, metadata=_h("Step at which the adversarial term (and the discriminator's training) starts."))
    disc_channels: int = field(default=32, metadata=_h("Width of the first patch-discriminator layer (doubles twice)."))

    stage = "vae"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if len(self.block_out_channels) != 4:
            raise ValueError("downsampling factor 8 needs exactly 4 blocks")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("norm_num_groups must divide every block width")
        if self.crop_size % 8 or not 8 <= self.crop_size <= self.image_size:
            raise ValueError("crop_size must be a multiple of 8 in [8, image_size]")
        if self.kl_weight < 0 or self.edge_weight < 0 or self.adv_weight < 0:
            raise ValueError("loss weights must be >= 0")
        if not self.train_encoder and not self.init_from:
            raise ValueError("train_encoder=False fine-tunes an existing decoder: set init_from to its VAE folder")
        if self.grow_layers < 0 or (self.grow_layers and not self.init_from):
            raise ValueError("grow_layers adds blocks to an existing VAE: set init_from (and grow_layers >= 0)")
        if self.grow_latent and (not self.init_from or not self.train_encoder):
            raise ValueError("grow_latent widens an existing VAE's latent: set init_from, and train the encoder (the new channels need one)")
        if self.adv_start < 0 or self.disc_channels < 8:
            raise ValueError("adv_start must be >= 0 and disc_channels >= 8")


@dataclass
class UnetConfig(StageConfig):
    """UNet2DConditionModel on 8x8x4 latents with cross-attention to the frozen CLIP text encoder."""

    block_out_channels: tuple[int, ...] = field(default=(64, 128, 128), metadata=_h("UNet widths per resolution (8, 4, 2)."))
    layers_per_block: int = field(default=1, metadata=_h("ResNet(+attention) layers per down block (up blocks get one more)."))
    attention_heads: int = field(default=4, metadata=_h("Attention heads (diffusers' attention_head_dim, which means heads)."))
    norm_num_groups: int = field(default=32, metadata=_h("GroupNorm groups; must divide every width."))
    cond_dropout: float = field(default=0.1, metadata=_h("Probability of replacing a caption by the empty string (classifier-free guidance)."))
    snr_gamma: float = field(default=5.0, metadata=_h("Min-SNR loss weighting gamma; 0 = plain epsilon MSE."))
    ema_decay: float = field(default=0.999, metadata=_h("EMA decay of the shipped UNet weights (warm-up: min(decay, (1+s)/(10+s)))."))
    num_train_timesteps: int = field(default=1000, metadata=_h("DDPM training timesteps."))
    beta_schedule: str = field(default="scaled_linear", metadata=_h("DDPM beta schedule (SD: scaled_linear)."))
    beta_start: float = field(default=0.00085, metadata=_h("DDPM beta_start (SD value)."))
    beta_end: float = field(default=0.012, metadata=_h("DDPM beta_end (SD value)."))
    clip_dir: str = field(default="", metadata=_h("Trained CLIP folder (text encoder + tokenizer); empty = <run_root>/clip/model."))
    vae_dir: str = field(default="", metadata=_h("Trained VAE folder; empty = <run_root>/vae/model."))
    latent_size: int = field(default=8, metadata=_h("Latent side (64 px / 8)."))
    init_from: str = field(default="", metadata=_h("Start from this UNet2DConditionModel folder (weights and EMA; the optimizer starts fresh) instead of random weights; its architecture replaces the size fields above. For carrying a trained UNet over to a new VAE's latent space (set vae_dir) without training from scratch."))
    lr: float = field(default=2e-4, metadata=_h("AdamW peak learning rate."))
    weight_decay: float = field(default=0.0, metadata=_h("AdamW weight decay."))
    max_steps: int = field(default=20000, metadata=_h("Total optimisation steps; re-run with a larger value to continue."))

    stage = "unet"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        if not 2 <= len(self.block_out_channels) <= 4:
            raise ValueError("block_out_channels must have 2..4 entries for 8x8 latents")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("norm_num_groups must divide every width")
        if any(c % self.attention_heads for c in self.block_out_channels):
            raise ValueError("attention_heads must divide every width")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError("cond_dropout must be in [0, 1)")
        if not 0 <= self.ema_decay < 1:
            raise ValueError("ema_decay must be in [0, 1)")
        if self.beta_schedule not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
            raise ValueError(f"unknown beta_schedule {self.beta_schedule}")
        if self.snr_gamma < 0:
            raise ValueError("snr_gamma must be >= 0")

    @property
    def clip_path(self) -> Path:
        return Path(self.clip_dir) if self.clip_dir else Path(self.run_root) / "clip" / "model"

    @property
    def vae_path(self) -> Path:
        return Path(self.vae_dir) if self.vae_dir else Path(self.run_root) / "vae" / "model"


@dataclass
class EvaluatorsConfig(StageConfig):
    """Evaluators trained separately from the generator (other seed; split eval_train = other emoji
    images than the generator's, or eval_seen = the generator's emoji images in other scenes):
    a CLIP (CLIP-I / CLIP-T), a DINO ViT (self-distillation) and a class classifier.
    ``max_steps`` is unused; each evaluator has its own step count; ``time_budget_s`` applies to each."""

    split: str = field(default="eval_train", metadata=_h("Data split (must differ from the generator's gen_train)."))
    seed: int = field(default=1, metadata=_h("Seed (differs from the generator's)."))
    batch_size: int = field(default=128, metadata=_h("Images per step (CLIP and classifier)."))
    which: str = field(default="clip,dino,classifier", metadata=_h("Comma-separated evaluators to train, in order."))
    clip_steps: int = field(default=1500, metadata=_h("CLIP evaluator steps."))
    dino_steps: int = field(default=1500, metadata=_h("DINO steps."))
    classifier_steps: int = field(default=1000, metadata=_h("Classifier steps."))
    classifier_stem_stride: int = field(default=2, metadata=_h(
        "Stride of the classifier's first convolution (2 = 4x cheaper per step than 1, the v0 evaluator)."))
    dino_batch_size: int = field(default=64, metadata=_h("DINO images per step (each gives 2 global + local crops)."))
    dino_local_crops: int = field(default=4, metadata=_h("DINO local (32 px) crops per image."))
    dino_hidden: int = field(default=128, metadata=_h("DINO ViT width."))
    dino_layers: int = field(default=4, metadata=_h("DINO ViT layers."))
    dino_out_dim: int = field(default=1024, metadata=_h("DINO head prototypes."))
    dino_teacher_momentum: float = field(default=0.996, metadata=_h("DINO teacher EMA momentum."))
    dino_teacher_temp: float = field(default=0.04, metadata=_h("DINO teacher temperature."))
    dino_student_temp: float = field(default=0.1, metadata=_h("DINO student temperature."))
    clip_max_length: int = field(default=32, metadata=_h("Evaluator CLIP text length."))
    clip_hidden: int = field(default=128, metadata=_h("Evaluator CLIP widths (text and vision)."))
    clip_layers: int = field(default=4, metadata=_h("Evaluator CLIP layers (text and vision)."))

    stage = "evaluators"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.split == "gen_train":
            raise ValueError("evaluators must not train on the generator's split gen_train")
        names = [w.strip() for w in self.which.split(",") if w.strip()]
        bad = set(names) - {"clip", "dino", "classifier"}
        if bad or not names:
            raise ValueError(f"which: unknown evaluators {sorted(bad)}")
        if self.classifier_stem_stride not in (1, 2):
            raise ValueError(f"classifier_stem_stride must be 1 or 2, got {self.classifier_stem_stride}")
        for name in ("clip_steps", "dino_steps", "classifier_steps", "dino_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.dino_local_crops < 0:
            raise ValueError("dino_local_crops must be >= 0")
        if not 0 < self.dino_teacher_momentum < 1:
            raise ValueError("dino_teacher_momentum must be in (0, 1)")
        if self.dino_hidden % 4 or self.clip_hidden % 4:
            raise ValueError("widths must be divisible by 4 (4 heads)")

    @property
    def evaluators(self) -> list[str]:
        return [w.strip() for w in self.which.split(",") if w.strip()]


STAGES: dict[str, type[StageConfig]] = {
    "clip": ClipConfig,
    "vae": VaeConfig,
    "unet": UnetConfig,
    "evaluators": EvaluatorsConfig,
}
