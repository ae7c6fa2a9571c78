"""Embedded miniature Stable Diffusion: architecture, resumable from-scratch pretraining, export.

See docs/mini-model.md. Entry points: ``personify.mini.train.main(cfg)`` with a config from
``personify.mini.config`` and ``personify.mini.export.export_pipeline`` / ``export_evaluators``.
"""
from .config import ClipConfig, EvaluatorsConfig, StageConfig, STAGES, UnetConfig, VaeConfig

__all__ = ["ClipConfig", "EvaluatorsConfig", "StageConfig", "STAGES", "UnetConfig", "VaeConfig"]
