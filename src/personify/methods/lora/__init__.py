from .config import LoRAConfig
from .method import LoRA

__all__ = ["LoRA", "LoRAConfig"]
