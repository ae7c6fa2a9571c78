"""A self-contained HTML report (images inlined as base64) and a comparison chart PNG."""
from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from pathlib import Path

from PIL import Image, ImageDraw

from ..generate import contact_sheet

METRICS = ("dino", "clip_i", "clip_t")
COLORS = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88), (171, 71, 188), (0, 172, 193)]


def summarize(results: list, base_clip_t: dict[str, float] | None = None) -> dict[str, dict]:
    """label -> {"overall": {metric: mean over subjects}, "normalized": {...}, "per_kind": {kind: {...}}}."""
    by_label: dict[str, list] = defaultdict(list)
    for r in results:
        by_label[r.label].append(r)
    out = {}
    for label, rs in by_label.items():
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        overall = {m: mean([r.overall[m] for r in rs]) for m in METRICS}
        norm = {
            "dino": mean([r.overall["dino"] / r.upper["dino"] for r in rs]),
            "clip_i": mean([r.overall["clip_i"] / r.upper["clip_i"] for r in rs]),
        }
        if base_clip_t:
            norm["clip_t"] = mean([r.overall["clip_t"] / base_clip_t[r.subject] for r in rs if r.subject in base_clip_t])
        kinds = sorted({k for r in rs for k in r.per_kind})
        per_kind = {k: {m: mean([r.per_kind[k][m] for r in rs if k in r.per_kind]) for m in METRICS} for k in kinds}
        upper = {m: mean([r.upper[m] for r in rs]) for m in ("dino", "clip_i")}
        out[label] = {"overall": overall, "normalized": norm, "per_kind": per_kind, "upper": upper, "subjects": len(rs),
                      "seconds_per_subject": mean([r.seconds for r in rs])}
    return out


def chart(summary: dict[str, dict], path: Path) -> Path:
    """Grouped bars: one group per metric, one bar per method/concept (raw values, 0..1)."""
    labels = list(summary)
    W, H, pad = 640, 360, 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.line([(pad, H - pad), (W - 10, H - pad)], fill="black")
    d.line([(pad, 10), (pad, H - pad)], fill="black")
    for v in (0.25, 0.5, 0.75, 1.0):
        y = H - pad - v * (H - pad - 20)
        d.line([(pad - 4, y), (W - 10, y)], fill=(220, 220, 220))
        d.text((4, y - 6), f"{v:.2f}", fill="black")
    group_w = (W - pad - 20) / len(METRICS)
    bar_w = group_w * 0.8 / max(1, len(labels))
    for gi, m in enumerate(METRICS):
        x0 = pad + 10 + gi * group_w
        d.text((x0 + group_w * 0.3, H - pad + 8), m.upper().replace("_", "-"), fill="black")
        for li, lab in enumerate(labels):
            v = max(0.0, min(1.0, summary[lab]["overall"][m]))
            x = x0 + li * bar_w
            d.rectangle([x, H - pad - v * (H - pad - 20), x + bar_w - 2, H - pad], fill=COLORS[li % len(COLORS)])
    for li, lab in enumerate(labels):
        d.rectangle([W - 200, 14 + li * 16, W - 190, 24 + li * 16], fill=COLORS[li % len(COLORS)])
        d.text((W - 184, 12 + li * 16), lab[:28], fill="black")
    img.save(path)
    return path


def _b64(img: Image.Image, scale: int = 2) -> str:
    if scale != 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_report(results: list, out: Path, title: str, base_clip_t: dict[str, float] | None = None, curves: dict[str, list] | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, base_clip_t)
    chart_path = chart(summary, out / "chart.png")
    (out / "results.json").write_text(json.dumps({"summary": summary, "subjects": [r.to_json() for r in results],
                                                  "base_clip_t": base_clip_t or {}}, indent=1))
    e = html.escape
    rows = []
    for lab, s in summary.items():
        n = s["normalized"]
        rows.append(
            f"<tr><td>{e(lab)}</td><td>{s['subjects']}</td>"
            + "".join(f"<td>{s['overall'][m]:.3f}</td>" for m in METRICS)
            + "".join(f"<td>{n[m]:.3f}</td>" if m in n else "<td>–</td>" for m in METRICS)
            + f"<td>{s['seconds_per_subject']:.1f}</td></tr>"
        )
    kind_rows = []
    for lab, s in summary.items():
        for k, v in s["per_kind"].items():
            kind_rows.append(f"<tr><td>{e(lab)}</td><td>{e(k)}</td>" + "".join(f"<td>{v[m]:.3f}</td>" for m in METRICS) + "</tr>")
    grids = []
    for r in results:
        cells = [f"<h3>{e(r.subject)} — {e(r.label)}</h3><p>real</p><img src='{_b64(contact_sheet(r.images['real'], cols=len(r.images['real'])))}'>"]
        for k, ims in r.images.items():
            if k != "real" and ims:
                cells.append(f"<p>{e(k)}</p><img src='{_b64(contact_sheet(ims, cols=len(ims)))}'>")
        grids.append("<div class='subj'>" + "".join(cells) + "</div>")
    curve_html = ""
    if curves:
        curve_html = "<h2>Validation curves</h2>" + "".join(
            f"<h3>{e(lab)}</h3><table><tr><th>step</th><th>metric</th></tr>" + "".join(f"<tr><td>{s}</td><td>{v:.4f}</td></tr>" for s, v in c) + "</table>"
            for lab, c in curves.items()
        )
    up = next(iter(summary.values()))["upper"] if summary else {"dino": 0, "clip_i": 0}
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
img{{image-rendering:pixelated}}.subj{{margin:12px 0;border-top:1px solid #eee}}</style></head><body>
<h1>{e(title)}</h1>
<p>DreamBench protocol: per subject 25 prompts × images per prompt; DINO and CLIP-I are mean pairwise cosines between generated and real
images; CLIP-T is the prompt–image cosine with the identifier removed. Normalized: DINO and CLIP-I ÷ real-vs-real upper bound
(here DINO {up['dino']:.3f}, CLIP-I {up['clip_i']:.3f}); CLIP-T ÷ the base model's CLIP-T without the subject.</p>
<h2>Summary</h2><table><tr><th>method / concept</th><th>subjects</th><th>DINO</th><th>CLIP-I</th><th>CLIP-T</th>
<th>DINO norm</th><th>CLIP-I norm</th><th>CLIP-T norm</th><th>s / subject</th></tr>{''.join(rows)}</table>
<p><img src="{_b64(Image.open(chart_path), 1)}"></p>
<h2>By prompt kind</h2><table><tr><th>method</th><th>kind</th><th>DINO</th><th>CLIP-I</th><th>CLIP-T</th></tr>{''.join(kind_rows)}</table>
{curve_html}
<h2>Subjects</h2>{''.join(grids)}
</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
