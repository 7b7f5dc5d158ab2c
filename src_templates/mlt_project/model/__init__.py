from .model import ImageClassifier

__all__ = ["ImageClassifier"]
