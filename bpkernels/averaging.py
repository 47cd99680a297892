"""The posterior averaged over training: the mixture of the weight marginals that message
passing visited, one per mini-batch, summarised by its moments (docs/algorithms.md §6.2).

With ρ < 1 the marginals stay broad and their signs keep moving from one mini-batch to the
next, so the network at any one step is a noisy draw; the average over many steps is one
network that keeps what the steps agree on (the message-passing analogue of stochastic
weight averaging). It costs one addition per weight and mini-batch, and nothing in training
changes.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from .sequential import BPSequential


class PosteriorAverage:
    """Running sums of the weight moments (:meth:`BPLayer.moments`) of every layer of
    ``model``, one term per :meth:`add`.

    Usage::

        average = PosteriorAverage(model)
        for x, y in batches:
            model.bp_step(x, y)
            average.add()
        net = average.network()   # a BPSequential: sign(m̄) point-wise, (m̄, σ̄) Bayesian

    The sums are float64 whatever the model's dtype, so that averaging many mini-batches adds
    no rounding of its own.
    """

    def __init__(self, model: BPSequential):
        self.model = model
        self.count = 0
        self.sums: list[list[Tensor]] = [
            [torch.zeros_like(t, dtype=torch.float64) for t in layer.moments()]
            for layer in model.bp_layers]

    @torch.no_grad()
    def add(self) -> None:
        """Adds the model's current marginals to the average."""
        for sums, layer in zip(self.sums, self.model.bp_layers):
            for total, moment in zip(sums, layer.moments()):
                total.add_(moment)
        self.count += 1

    @torch.no_grad()
    def network(self) -> BPSequential:
        """A copy of the model whose layers hold the averaged marginals (their mean moments)."""
        if self.count == 0:
            raise ValueError("the posterior average is empty: add() at least one step first")
        reduction, self.model.h_in_reduction = self.model.h_in_reduction, None
        try:  # the data-parallel reduction (a process group) is not part of the network
            net = copy.deepcopy(self.model)
        finally:
            self.model.h_in_reduction = reduction
        for sums, layer in zip(self.sums, net.bp_layers):
            layer.set_moments([(total / self.count).to(layer.field.dtype) for total in sums])
        return net

    def state_dict(self) -> dict:
        return {"count": self.count, "sums": [[t.clone() for t in sums] for sums in self.sums]}

    def load_state_dict(self, state: dict) -> None:
        sums = state["sums"]
        shapes = [[list(t.shape) for t in layer] for layer in self.sums]
        if [[list(t.shape) for t in layer] for layer in sums] != shapes:
            raise ValueError("the saved posterior average does not match the network's layers")
        self.count = int(state["count"])
        for mine, saved in zip(self.sums, sums):
            for total, t in zip(mine, saved):
                total.copy_(t)
