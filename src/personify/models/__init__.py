from .loading import load_pipeline, model_hash, same_base, DEFAULT_MODEL

__all__ = ["load_pipeline", "model_hash", "same_base", "DEFAULT_MODEL"]
