"""Neural ODE image classifiers (paper section 4.1): ODE function, ODE block with NFE, model, training."""

from .func import ODEFunc
from .model import NodeClassifier
from .run_config import NodeRunConfig, preset
from .solve import ODEBlock, SolverError, SolverOptions, SolveStats
from .train import TrainResult, train_classifier

__all__ = ["NodeClassifier", "NodeRunConfig", "ODEBlock", "ODEFunc", "SolveStats", "SolverError", "SolverOptions",
           "TrainResult", "preset", "train_classifier"]
