"""Loss-curve PNGs from the stages' log.csv (PIL only; matplotlib is not a dependency).

    python -m personify.mini.plots --run_root /work/runs/mini --out docs/mini-model-losses.png
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from PIL import Image, ImageDraw

PANELS = [("clip", "loss"), ("vae", "l1"), ("unet", "loss"), ("evaluators/clip", "loss"), ("evaluators/dino", "loss"),
          ("evaluators/classifier", "loss")]


def _read(path: Path, key: str) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    with open(path) as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key) not in (None, "")]


def _smooth(ys: list[float], k: int) -> list[float]:
    out, acc = [], []
    for y in ys:
        acc.append(y)
        acc = acc[-k:]
        out.append(sum(acc) / len(acc))
    return out


def plot_losses(run_root: str | Path, out: str | Path, panel_w: int = 360, panel_h: int = 220) -> Path:
    run_root = Path(run_root)
    cols = 3
    rows = math.ceil(len(PANELS) / cols)
    img = Image.new("RGB", (cols * panel_w, rows * panel_h), "white")
    d = ImageDraw.Draw(img)
    for i, (stage, key) in enumerate(PANELS):
        x0, y0 = (i % cols) * panel_w, (i // cols) * panel_h
        pts = _read(run_root / stage / "log.csv", key)
        d.rectangle([x0 + 40, y0 + 20, x0 + panel_w - 10, y0 + panel_h - 25], outline="black")
        d.text((x0 + 45, y0 + 4), f"{stage}: {key}" + (f"  (step {pts[-1][0]})" if pts else "  (no data)"), fill="black")
        if len(pts) < 2:
            continue
        xs = [p[0] for p in pts]
        ys = _smooth([p[1] for p in pts], max(1, len(pts) // 50))
        lo, hi = min(ys), max(ys)
        hi = hi if hi > lo else lo + 1e-6
        sx = (panel_w - 60) / max(1, xs[-1] - xs[0])
        sy = (panel_h - 55) / (hi - lo)
        line = [(x0 + 45 + (x - xs[0]) * sx, y0 + panel_h - 30 - (y - lo) * sy) for x, y in zip(xs, ys)]
        d.line(line, fill=(200, 30, 30), width=2)
        d.text((x0 + 2, y0 + 20), f"{hi:.3g}", fill="black")
        d.text((x0 + 2, y0 + panel_h - 38), f"{lo:.3g}", fill="black")
        d.text((x0 + 40, y0 + panel_h - 20), f"{xs[0]}", fill="black")
        d.text((x0 + panel_w - 60, y0 + panel_h - 20), f"{xs[-1]}", fill="black")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="personify.mini.plots")
    ap.add_argument("--run_root", default="/work/runs/mini")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    print(plot_losses(a.run_root, a.out))


if __name__ == "__main__":
    main()
