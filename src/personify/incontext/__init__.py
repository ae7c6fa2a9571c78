"""In-context subject-driven generation (SuTI-style apprentice): demonstrations in, images out, no tuning.

    from personify.incontext import Apprentice, generate_with_demos
See docs/incontext.md.
"""
from .generate import DemosConfig, check_demo_count, demo_consistency, generate_with_demos, load_apprentice
from .model import Apprentice, DemoAttention, DemoAttnProcessor, DemoContext

__all__ = ["Apprentice", "DemoAttention", "DemoAttnProcessor", "DemoContext", "DemosConfig", "check_demo_count",
           "demo_consistency", "generate_with_demos", "load_apprentice"]
