"""docs/results.md is shared by several benchmarks: each owns one block between
`<!-- NAME:begin -->` and `<!-- NAME:end -->` and rewrites only that block (appended if missing)."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
HEADER = ("# Results\n\nEvery number here is written by a benchmark script in `benchmarks/`; each section names the "
          "command that regenerates it. Sections are regenerated independently.\n")


def write_section(name: str, body: str, doc: str | Path = DOC, notes: str | Path | None = None) -> Path:
    """`notes`: a hand-written reading of the numbers kept beside the script (e.g. the script's path with
    `.md`); appended to the block when it exists, so a rerun keeps it."""
    doc = Path(doc)
    if notes is not None and Path(notes).is_file():
        body = body.rstrip() + "\n\n" + Path(notes).read_text().strip()
    text = doc.read_text() if doc.exists() else HEADER
    block = f"<!-- {name}:begin -->\n{body.rstrip()}\n<!-- {name}:end -->"
    pat = re.compile(rf"<!-- {re.escape(name)}:begin -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return doc
