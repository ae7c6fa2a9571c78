from .loading import load_pipeline, model_hash, DEFAULT_MODEL

__all__ = ["load_pipeline", "model_hash", "DEFAULT_MODEL"]
