"""Export personify concepts to the files other tools read, and load those back.

    from personify.export import export, load_kohya_lora
    export("runs/dog/concept.safetensors", "dog-lora.safetensors")             # LoRA -> kohya / A1111
    export("runs/toy/concept.safetensors", "out/", format="a1111")             # TI -> out/my-toy.safetensors
    export("runs/toy/concept.safetensors", "out/", format="diffusers")         # TI -> out/learned_embeds.safetensors
    load_kohya_lora(pipe, "dog-lora.safetensors")                             # any plain SD1/2 kohya LoRA

Formats per method: lora: kohya (= a1111, the same file); textual_inversion: a1111 (= kohya),
diffusers. `out_path` may be a `.safetensors` file or a folder (a default file name is chosen).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import check
from ..artifact import read_concept
from ..errors import PersonifyError
from .kohya import export_kohya, load_kohya_lora, lora_to_kohya

FORMATS = {"lora": ("kohya", "a1111"), "textual_inversion": ("a1111", "kohya", "diffusers")}


def export(concept_path: str | os.PathLike, out_path: str | os.PathLike, format: str = "kohya") -> Path:
    """Write the concept at `concept_path` in `format`; returns the written file."""
    _, meta = read_concept(concept_path)
    method = meta.get("method")
    if method not in FORMATS:
        exportable = ", ".join(f"{m} ({'/'.join(f)})" for m, f in FORMATS.items())
        raise PersonifyError(f"{meta['path']}: {method} concepts cannot be exported yet; exportable: {exportable}")
    if format not in FORMATS[method]:
        raise PersonifyError(f"{meta['path']}: a {method} concept exports as {' or '.join(FORMATS[method])}, not {format!r}")
    out = Path(out_path).expanduser()
    if out.suffix != ".safetensors":
        out.mkdir(parents=True, exist_ok=True)
        if method == "lora":
            tokens = meta.get("tokens") or []
            out = out / f"lora-{tokens[0] if tokens else 'concept'}.safetensors"
        else:
            from .embeddings import default_name

            out = out / default_name(concept_path, format)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
    if method == "lora":
        return export_kohya(concept_path, out)
    from .embeddings import export_embedding

    return export_embedding(concept_path, out, format)


@dataclass
class ExportConfig:
    concept: str = field(default="", metadata={"help": "personify concept (.safetensors) to export"})
    out: str = field(default="", metadata={"help": "output .safetensors file or folder"})
    format: str = field(default="kohya", metadata={"help": "kohya / a1111 (LoRA, TI) or diffusers (TI)"})

    def __post_init__(self) -> None:
        check(bool(self.concept) and bool(self.out), "pass --concept FILE and --out PATH")


def main(cfg: ExportConfig) -> Path:
    return export(cfg.concept, cfg.out, cfg.format)


__all__ = ["export", "load_kohya_lora", "lora_to_kohya", "FORMATS", "ExportConfig", "main"]
