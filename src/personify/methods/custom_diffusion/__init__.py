from .config import CustomDiffusionConfig
from .merge import MergeConfig, main, merge_concepts, merge_weights
from .method import CustomDiffusion, cross_attention_parameters, join_concept_folders
from .retrieval import retrieve_regularization

__all__ = [
    "CustomDiffusion", "CustomDiffusionConfig", "MergeConfig", "main", "merge_concepts", "merge_weights",
    "cross_attention_parameters", "join_concept_folders", "retrieve_regularization",
]
