"""bpkernels: binary neural networks trained by belief-propagation message passing.

Fused C++/CUDA kernels for the BP, BPI, AMP and MF updates of Lucibello et al. (2022), drop-in
layers, a trainer and Bayesian predictions from the weight marginals.
"""

import torch  # noqa: F401  (loads libtorch, which _C links against)

from . import _C  # noqa: F401  (loads the library; its static initialisers register the ops)
from . import _ops  # noqa: F401  (fake kernels)
from . import data, ops, reference
from .algorithms import ALGORITHMS, Algorithm, register_algorithm
from .arch import build_arch, mlp, parse_arch
from .averaging import PosteriorAverage
from .conv import BPConv2d
from .gaussian import GaussianBPLinear
from .layers import BPLayer, BPLinear, register_layer
from .packed import export, load_packed
from .pool import BPMaxPool2d
from .sequential import BPSequential, ensemble_error, ensemble_errors, ensemble_predict
from .train import MessagePassingTrainer, Ramp, Trainer, evaluate, fit, load_model

__version__ = "0.2.0"

__all__ = ["ALGORITHMS", "Algorithm", "BPConv2d", "BPLayer", "BPLinear", "BPMaxPool2d",
           "BPSequential", "GaussianBPLinear", "MessagePassingTrainer", "PosteriorAverage",
           "Ramp", "Trainer", "build_arch", "data", "ensemble_error", "ensemble_errors",
           "ensemble_predict", "evaluate", "export", "fit", "load_model", "load_packed", "mlp",
           "ops", "parse_arch",
           "reference", "register_algorithm", "register_layer", "__version__"]
