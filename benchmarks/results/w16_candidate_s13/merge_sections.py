"""If the candidate ships: rewrite the base-model sections of docs/results.md from the rerun's section files,
with the notes files as they are now in benchmarks/ (the rerun's blocks end with the notes as they were in its
snapshot; that tail is replaced). usage: python merge_sections.py RUN_DIR   (RUN_DIR holds results_*.md and code/)"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))
from results_doc import write_section  # noqa: E402

run = Path(sys.argv[1])
for name, src, notes in (("mini-dreambench", "results_A.md", "mini_dreambench.md"),
                         ("cd-pairs", "results_B.md", "custom_diffusion_pairs.md"),
                         ("seedselect", "results_B.md", "seedselect_longtail.md"),
                         ("incontext", "results_app.md", "incontext_mini.md")):
    text = (run / src).read_text()
    body = re.search(rf"<!-- {name}:begin -->\n(.*?)\n<!-- {name}:end -->", text, re.S).group(1).rstrip()
    old = (run / "code" / "benchmarks" / notes).read_text().strip()
    assert body.endswith(old), f"{name}: the block does not end with the snapshot's notes"
    write_section(name, body[: -len(old)], notes=ROOT / "benchmarks" / notes)
    print("rewrote", name, "from", run / src)
