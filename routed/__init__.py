"""routed: confidence-routed transformers — train, route, evaluate, compare."""

__version__ = "0.1.0"

from routed.config import PRESETS, ModelConfig, Preset, TrainConfig, get_preset  # noqa: E402
from routed.model import RoutedTransformer  # noqa: E402

__all__ = ["PRESETS", "ModelConfig", "Preset", "RoutedTransformer", "TrainConfig", "get_preset", "__version__"]
