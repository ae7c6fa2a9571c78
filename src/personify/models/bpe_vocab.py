"""Convert OpenAI CLIP's BPE file (`bpe_simple_vocab_16e6.txt.gz`) to the HF tokenizer layout.

OpenAI ships the 49,408-token vocabulary as a list of merges only; `CLIPTokenizer` wants
`vocab.json` + `merges.txt`. The file ships inside the `open_clip_torch` wheel (MIT licence), so
the conversion runs offline:

    pip download --no-deps open_clip_torch && unzip -p open_clip_torch-*.whl \
        open_clip/bpe_simple_vocab_16e6.txt.gz > bpe.txt.gz
    python -m personify.models.bpe_vocab bpe.txt.gz src/personify/assets/clip_tokenizer

The vocabulary order follows OpenAI's `SimpleTokenizer.__init__` (CLIP repo, `simple_tokenizer.py`):
256 byte characters, the same with `</w>`, one token per merge, then the two special tokens.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    # The GPT-2 trick: map every byte to a printable unicode character so BPE never sees
    # whitespace/control characters.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def convert(bpe_gz: Path, out_dir: Path) -> None:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
