"""The model description: where users' models come from (``load_model``) and how they are called (``describe``).

``ModelCall`` (in ``timeaware.calling``) is the typed description itself; it lives below the models so
that a model can state its own (``timeaware_call()``).
"""

from ..calling import Input, ModelCall
from .describe import describe, guess_input_shape, probe
from .load import build_base, is_model_path, load_model

__all__ = ["Input", "ModelCall", "build_base", "describe", "guess_input_shape", "is_model_path", "load_model",
           "probe"]
