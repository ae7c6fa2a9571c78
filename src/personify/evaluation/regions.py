"""Subject fidelity inside an image that shows several subjects (multi-concept customization).

The DreamBench protocol embeds the whole image; with two subjects in one image that mixes both
with the background, so a perfect pair image scores like a half-wrong single one. Here every image
is cut into square windows at the scales the objects appear at (the emoji world draws one object
at 22-52 px and each of two at 18-34 px in a 64 px scene; mini-DreamBench's photos show 30-54 px
subjects), each window is embedded by the evaluator (DINO, resized to its input size), and a
subject's score is the best window's mean cosine similarity to the subject's real images:

    fid(image, subject) = max_w  mean_j cos(E(window_w), E(real_j))

Taking the max over ~50 windows is biased upward, so it is never read alone: the upper bound
applies the same operator to each real image against the *other* real images (leave-one-out), and
the floor is the base model's images for the same prompts without the subjects (same operator).
`normalised = fid / upper_bound`; a subject missing from the image scores like the floor.
"""
from __future__ import annotations

import torch
from PIL import Image

from .dreambench import pixels

WINDOWS = (32, 40, 48, 64)  # px at 64 px images; scaled to other sizes
STRIDE = 8


def window_boxes(size: int, windows: tuple[int, ...] = WINDOWS, stride: int = STRIDE) -> list[tuple[int, int, int]]:
    """(top, left, side) of every square window, sides given for 64 px images and scaled to `size`,
    positions every `stride` (scaled) px; the whole image is always one of them."""
    f = size / 64
    out = []
    for w in sorted({min(size, max(1, round(w * f))) for w in windows} | {size}):
        st = max(1, round(stride * f))
        starts = sorted(set(range(0, size - w + 1, st)) | {size - w})
        out += [(t, l, w) for t in starts for l in starts]
    return out


@torch.no_grad()
def window_embeddings(encoder, images: list[Image.Image], windows: tuple[int, ...] = WINDOWS, stride: int = STRIDE, batch: int = 256) -> torch.Tensor:
    """(N, R, D) L2-normalised embeddings of the R windows of each image (`encoder.image` takes
    (B, 3, H, W) in [0, 1] and resizes to its own input size). Images must share one size."""
    x = pixels(images)  # (N, 3, S, S)
    boxes = window_boxes(x.shape[-1], windows, stride)
    emb: dict[int, torch.Tensor] = {}
    for side in sorted({w for _, _, w in boxes}):  # one crop size per encoder batch
        idx = [i for i, b in enumerate(boxes) if b[2] == side]
        crops = torch.stack([x[:, :, boxes[i][0] : boxes[i][0] + side, boxes[i][1] : boxes[i][1] + side] for i in idx], 1).flatten(0, 1)
        e = torch.cat([encoder.image(crops[s : s + batch]) for s in range(0, len(crops), batch)]).view(x.shape[0], len(idx), -1)
        emb.update({i: e[:, k] for k, i in enumerate(idx)})
    return torch.stack([emb[i] for i in range(len(boxes))], 1)


def best_window(window_emb: torch.Tensor, real: torch.Tensor, leave_one_out: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the best window's mean cosine to the real embeddings `real` (M, D) and its index.
    `leave_one_out`: image i is real image i, which is left out of its own mean."""
    sims = window_emb @ real.T  # (N, R, M)
    if leave_one_out:
        n, m = sims.shape[0], sims.shape[2]
        keep = ~torch.eye(n, m, dtype=torch.bool)[:, None, :]  # (N, 1, M)
        score = (sims * keep).sum(-1) / keep.sum(-1).clamp_min(1)
    else:
        score = sims.mean(-1)  # (N, R)
    best, arg = score.max(-1)
    return best, arg


def subject_upper_bound(encoder, real_images: list[Image.Image], windows: tuple[int, ...] = WINDOWS, stride: int = STRIDE) -> float:
    """The window score of real photos: each real image's best window against the other real images."""
    if len(real_images) < 2:
        from ..errors import PersonifyError

        raise PersonifyError("the real-vs-real upper bound needs at least 2 real images of the subject")
    with torch.no_grad():
        real = encoder.image(pixels(real_images))
    return float(best_window(window_embeddings(encoder, real_images, windows, stride), real, leave_one_out=True)[0].mean())
