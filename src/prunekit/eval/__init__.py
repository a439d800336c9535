"""Evaluation: perplexity (and later zero-shot accuracy and speed)."""

from .perplexity import perplexity

__all__ = ["perplexity"]
