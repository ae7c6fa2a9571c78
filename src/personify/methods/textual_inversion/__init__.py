from .config import TextualInversionConfig
from .method import STYLE_TEMPLATES, OBJECT_TEMPLATES, TextualInversion, placeholder_names

__all__ = ["TextualInversion", "TextualInversionConfig", "OBJECT_TEMPLATES", "STYLE_TEMPLATES", "placeholder_names"]
