"""bpkernels: binary neural networks trained by belief-propagation message passing.

Fused C++/CUDA kernels for the BP, BPI, AMP and MF updates of Lucibello et al. (2022), drop-in
layers, a trainer and Bayesian predictions from the weight marginals.
"""

import torch  # noqa: F401  (loads libtorch, which _C links against)

from . import _C  # noqa: F401  (loads the library; its static initialisers register the ops)
from . import _ops  # noqa: F401  (fake kernels)
from . import data, ops, reference
from .conv import BPConv2d, build_arch
from .nn import BPLinear, BPSequential, mlp
from .packed import export, load_packed
from .train import evaluate, fit, load_model

__version__ = "0.1.0"

__all__ = ["BPConv2d", "BPLinear", "BPSequential", "build_arch", "mlp", "fit", "evaluate", "load_model", "export",
           "load_packed", "data", "ops",
           "reference", "__version__"]
