"""Caption wording: several templates per scene kind, so the text encoder sees varied phrasing
("a photo of a dog on the beach", "dog, beach", "a dog lying on the sand at the beach")."""
from __future__ import annotations

import numpy as np

from .backgrounds import Background

_AN_EXCEPTIONS = ("uni", "ufo", "use", "eu", "one")
_SINGULAR_S = ("ss", "us", "os", "is")
STYLE_PREFIX = {"sketch": "a pencil sketch of", "pixel art": "pixel art of", "watercolor": "a watercolor painting of"}


def is_plural(word: str) -> bool:
    """'glasses', 'french fries', 'skis' take no article; 'bus', 'cactus', 'glass' do."""
    last = word.split()[-1]
    return last.endswith("s") and not last.endswith(_SINGULAR_S)


def with_article(phrase: str, head_word: str) -> str:
    if is_plural(head_word):
        return phrase
    first = phrase.split()[0]
    an = first[0] in "aeiou" and not first.startswith(_AN_EXCEPTIONS) or first.startswith(("hour", "x-"))
    return ("an " if an else "a ") + phrase


def noun_phrase(word: str, modifier: str | None = None, accessory: str | None = None) -> str:
    """'a red dog wearing sunglasses'; modifier is a colour or material word."""
    core = f"{modifier} {word}" if modifier else word
    np_ = with_article(core, word)
    return f"{np_} wearing {accessory}" if accessory else np_


def bare(word: str, modifier: str | None = None) -> str:
    return f"{modifier} {word}" if modifier else word


def caption(rng: np.random.Generator, subject: str, subject_bare: str, bg: Background | None, style: str | None) -> str:
    """subject: full noun phrase ('a red dog next to a cat'); subject_bare: tag form ('red dog')."""
    if bg is None:
        scene = [f"a photo of {subject}", subject, subject_bare, f"{subject} on a plain background",
                 f"a close-up photo of {subject}"]
        loc, tag = "", ""
    else:
        alt = bg.alts[rng.integers(len(bg.alts))]
        scene = [f"a photo of {subject} {bg.phrase}", f"{subject} {bg.phrase}", f"{subject_bare}, {bg.name}",
                 f"{subject} {alt}", f"a picture of {subject} {bg.phrase}"]
        loc, tag = f" {bg.phrase}", f", {bg.name}"
    if style is None:
        return scene[rng.integers(len(scene))]
    options = [f"{STYLE_PREFIX[style]} {subject}{loc}", f"{subject}{loc}, {style}", f"{subject_bare}{tag}, {style}"]
    return options[rng.integers(len(options))]
