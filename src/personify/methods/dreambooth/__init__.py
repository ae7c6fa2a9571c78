from .method import DreamBooth, DreamBoothConfig

__all__ = ["DreamBooth", "DreamBoothConfig"]
