from .images import IMAGE_SUFFIXES, find_images, load_rgb
from .dataset import SubjectImages

__all__ = ["IMAGE_SUFFIXES", "find_images", "load_rgb", "SubjectImages"]
