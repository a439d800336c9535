"""Loading models and describing their architecture."""

from .adapters import Adapter, get_adapter, supported_model_types
from .loading import EMBEDDED_MODELS

__all__ = ["Adapter", "EMBEDDED_MODELS", "get_adapter", "supported_model_types"]
