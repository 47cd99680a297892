r"""``BPSequential``: a binary network of message-passing layers, and its mini-batch update.

One call of :meth:`BPSequential.bp_step` is one posterior-as-prior mini-batch update (docs
§3–§5):

1. every layer starts a :class:`~bpkernels.algorithms.BatchState`: the prior θ of its field
   updates (PasP θ = ρ·H by default) and empty downward messages (b, BP cavity state, AMP
   memory); H and m are never reset;
2. τ_max times: a forward sweep (moments ω, V and up-fields u, layer by layer), a backward
   sweep (output function, downward fields b and field messages H_in, top to bottom; a
   max-pooling channel maps u going up and b going down, :mod:`bpkernels.pool`), the
   H_in of every layer through the reduction hook (identity unless set, e.g. an all-reduce for
   data-parallel training), and the field/reinforcement/damping update of every layer.

The field updates of one sweep wait until every H_in is known; that changes nothing, since a
layer's backward reads only its own weights and the b of the layer above.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .layers import BPLayer, layer_from_config
from .pool import BPMaxPool2d

# In-place reduction of the field messages of one inner iteration, one tensor per
# message-passing layer, bottom to top: H_in [K, N] ([2, K, N] = (H_in, Ω_in) for a Gaussian
# layer, bpkernels.gaussian).
HInReduction = Callable[[list[Tensor]], None]


def _flatten_shape(flatten: nn.Flatten, shape: tuple) -> tuple:
    """Per-sample shape after an nn.Flatten (None: unknown size)."""
    full = (None, *shape)  # with the batch dimension
    start, end = flatten.start_dim % len(full), flatten.end_dim % len(full)
    merged = full[start:end + 1]
    size = None if None in merged else int(torch.Size(merged).numel())
    return (*full[1:start], size, *full[end + 1:])


def algo_name(algos: Sequence[str]) -> str:
    """The name of a network's message-passing variants, one per layer: "amp" when every layer
    runs the same one, else them all joined by "+" ("bpi+amp+amp+amp")."""
    return algos[0] if len(set(algos)) == 1 else "+".join(algos)


class BPSequential(nn.Module):
    """A binary network of message-passing layers (``BPLinear``, ``BPConv2d``), max-pooling
    channels (``BPMaxPool2d``) and ``nn.Flatten``.

    The last layer must be a BPLinear output layer (``output="sign"`` or ``"argmax"``). Messages
    crossing an nn.Flatten are reshaped: the up-fields u flattened going up, the downward fields
    b unflattened going down. A BPMaxPool2d turns the up-fields of its inputs into those of the
    pooled units going up, and the downward fields of the pooled units into those of its
    inputs going down (:mod:`bpkernels.pool`); it has no weights and no field update.

    Inputs are [B, *in_shape] of the first message-passing layer after the leading nn.Flatten
    layers, if any: [B, N] for a BPLinear, images [B, C, H, W] for a
    BPConv2d, which also takes flat [B, C·H·W] inputs when built with ``input_size``. Layer
    shapes are checked when the network is built, as far as they are known (a first BPConv2d
    without ``input_size`` leaves the image size open until the first batch).

    ``model(x)`` predicts point-wise with the signs of the magnetisations;
    ``model.predict(x, mode="bayes")`` propagates the moments of the factorised weight
    marginals (docs §6). Both run under no_grad and never change the model.

    Attributes:
        h_in_reduction: None, or a function that reduces the field messages of every layer in
            place between their computation and the field update (see :data:`HInReduction`).
        reinforcement_calls: inner iterations run so far (the reinforcement schedule's clock).
    """

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        for layer in self.layers:
            if not isinstance(layer, (BPLayer, BPMaxPool2d, nn.Flatten)):
                raise TypeError("BPSequential accepts message-passing layers (BPLinear, BPConv2d), "
                                f"BPMaxPool2d and nn.Flatten, got {type(layer).__name__}")
            if isinstance(layer, nn.Flatten) and layer.start_dim == 0:
                raise ValueError("nn.Flatten must keep the batch dimension (start_dim >= 1)")
        bp_layers = self.bp_layers
        if not bp_layers:
            raise ValueError("BPSequential needs at least one message-passing layer")
        if any(layer.output is not None for layer in bp_layers[:-1]):
            raise ValueError("only the last message-passing layer may be an output layer")
        if bp_layers[-1].output is None:
            raise ValueError("the last message-passing layer must have output='sign' or output='argmax'")
        if self.layers[-1] is not bp_layers[-1]:
            raise ValueError("the output layer must be the last layer")
        self._start = list(self.layers).index(bp_layers[0])  # modules before it prepare inputs
        if any(isinstance(layer, BPMaxPool2d) for layer in list(self.layers)[:self._start]):
            raise ValueError("a BPMaxPool2d pools the ±1 outputs of a message-passing layer: it "
                             "cannot come before the first one")
        self._chain_shapes(bp_layers[0].input_shape)
        self.reinforcement_calls = 0
        self.h_in_reduction: HInReduction | None = None

    @property
    def bp_layers(self) -> list[BPLayer]:
        return [layer for layer in self.layers if isinstance(layer, BPLayer)]

    @property
    def body(self) -> list[nn.Module]:
        """The modules from the first message-passing layer on."""
        return list(self.layers)[self._start:]

    def _chain_shapes(self, shape: tuple) -> None:
        # Per-sample shapes through the body; every layer raises ValueError where they break.
        for layer in self.body:
            if isinstance(layer, (BPLayer, BPMaxPool2d)):
                shape = layer.output_shape(shape)
            else:
                shape = _flatten_shape(layer, shape)

    @property
    def num_classes(self) -> int:
        last = self.bp_layers[-1]
        return 2 if last.output == "sign" else last.out_features

    @property
    def algo(self) -> str:
        """The message-passing variant of the layers (:func:`algo_name`)."""
        return algo_name([layer.algo for layer in self.bp_layers])

    @property
    def device(self) -> torch.device:
        return self.bp_layers[0].field.device

    @property
    def dtype(self) -> torch.dtype:
        return self.bp_layers[0].field.dtype

    def config(self) -> list[dict]:
        return [layer.config() if isinstance(layer, (BPLayer, BPMaxPool2d))
                else dict(type="flatten", start_dim=layer.start_dim, end_dim=layer.end_dim)
                for layer in self.layers]

    @classmethod
    def from_config(cls, config: list[dict], **factory) -> "BPSequential":
        """The network of ``model.config()`` (factory: dtype, device), freshly initialised."""
        return cls(*(layer_from_config(spec, **factory) for spec in config))

    # ---- inputs --------------------------------------------------------------------------

    def _shape_x(self, x: Tensor) -> Tensor:
        """Runs the leading modules, checks the per-sample shape and reshapes flat images for a
        conv-first network. No host synchronisation."""
        first = self.bp_layers[0]
        for layer in list(self.layers)[:self._start]:
            x = layer(x)
        in_shape = first.input_shape
        flat_size = None if None in in_shape else int(torch.Size(in_shape).numel())
        if len(in_shape) > 1 and x.dim() == 2 and x.shape[1] == flat_size:
            x = x.reshape(x.shape[0], *in_shape)  # flat images into a conv-first network
        if x.dim() != 1 + len(in_shape) or any(n not in (None, m) for n, m in zip(in_shape, x.shape[1:])):
            dims = ", ".join("*" if n is None else str(n) for n in in_shape)
            flat = f" or [B, {flat_size}]" if len(in_shape) > 1 and flat_size else ""
            raise ValueError(f"input must have shape [B, {dims}]{flat} (after Flatten), got {list(x.shape)}")
        if None in in_shape:
            self._chain_shapes(tuple(x.shape[1:]))
        if x.shape[0] == 0:
            raise ValueError("the batch is empty")
        return x.to(device=self.device, dtype=self.dtype).contiguous()

    def _labels(self, y: Tensor) -> Tensor:
        """Labels as the output layer's ops take them (no checks, no host synchronisation):
        int64 classes [B] (argmax) or ±1 [B, 1] in the model's dtype (sign)."""
        y = y.to(self.device)
        if self.bp_layers[-1].output == "argmax":
            return y.long()
        return y.to(self.dtype).unsqueeze(1).contiguous()

    def check_inputs(self, x: Tensor) -> Tensor:
        """x in the model's shape, device and dtype, checked to be finite and small enough
        that the moments Σ_i σ x_i² of the first layer cannot overflow in the model's dtype."""
        if not isinstance(x, Tensor):
            raise TypeError(f"inputs must be a tensor, got {type(x).__name__}")
        if x.is_floating_point() and not torch.isfinite(x).all():
            raise ValueError("the input contains NaN or infinite values")
        shaped = self._shape_x(x)
        if not torch.isfinite(shaped).all():
            raise ValueError(f"the input has values beyond the range of {self.dtype} (largest "
                             f"|x| = {float(x.abs().max()):.3g}): normalise the inputs")
        fan_in = int(torch.Size(shaped.shape[1:]).numel()) if len(shaped.shape) > 1 else 1
        limit = math.sqrt(torch.finfo(self.dtype).max / fan_in) / 4
        largest = float(shaped.abs().max())
        if largest > limit:
            raise ValueError(f"the input has values up to {largest:.3g}: above {limit:.3g}, the "
                             f"preactivation variances overflow {self.dtype}; normalise the inputs")
        return shaped

    def check_labels(self, y: Tensor, batch: int) -> Tensor:
        """y checked against the output layer (shape [batch], integer classes in range, or ±1)
        and converted as :meth:`_labels` does."""
        last = self.bp_layers[-1]
        if not isinstance(y, Tensor):
            raise TypeError(f"labels must be a tensor, got {type(y).__name__}")
        if y.shape != (batch,):
            raise ValueError(f"labels must have shape [{batch}], got {list(y.shape)}")
        if last.output == "argmax":
            if y.is_floating_point() or y.dtype == torch.bool:
                raise ValueError(f"an argmax output layer needs integer class labels, got {y.dtype}")
            if y.min() < 0 or y.max() >= last.out_features:
                raise ValueError(f"class labels must lie in [0, {last.out_features}), "
                                 f"got range [{int(y.min())}, {int(y.max())}]")
        elif not ((y == 1) | (y == -1)).all():
            raise ValueError("a sign output layer needs labels ±1")
        return self._labels(y)

    # ---- training ------------------------------------------------------------------------

    @torch.no_grad()
    def bp_step(self, x: Tensor, y: Tensor, tau_max: int = 1, pasp: bool = True,
                r_step: float = 0.0, checked: bool = False) -> Tensor:
        """One mini-batch update by message passing (docs §3).

        Args:
            x: [B, ...] inputs (see the class docstring).  y: [B] labels (int64 classes for an
                argmax output, ±1 for a sign output).
            tau_max: inner message-passing iterations.
            pasp: the layers' priors (PasP θ = ρH by default); False is full-batch mode (θ = 0).
            r_step: internal reinforcement schedule; after 10 inner iterations (counted across
                calls) every layer's r ← 1 − (1 − r)(1 − r_step).
            checked: x and y were validated already (:meth:`check_inputs`,
                :meth:`check_labels`, as :func:`bpkernels.fit` does once per run): skip the
                value checks, so that the step makes no host synchronisation.
        Returns:
            The convergence monitor δ of the last inner iteration (max over layers), a 0-dim
            tensor on the model's device.
        """
        if tau_max < 1:
            raise ValueError(f"tau_max must be >= 1, got {tau_max}")
        if checked:
            x = self._shape_x(x)
            labels = self._labels(y)
        else:
            x = self.check_inputs(x)
            labels = self.check_labels(y, x.shape[0])
        layers = self.bp_layers
        states = {layer: layer.mp_begin(tau_max, pasp) for layer in layers}
        first = layers[0]
        for _ in range(tau_max):
            signal, shapes, pooled = x, [], {}  # what each nn.Flatten and BPMaxPool2d received
            for layer in self.body:
                if isinstance(layer, BPLayer):
                    signal = layer.mp_forward(states[layer], signal, first=layer is first)
                elif isinstance(layer, BPMaxPool2d):
                    pooled[layer] = signal
                    signal = layer.up_field(signal)
                else:  # u flattened going up
                    shapes.append(signal.shape)
                    signal = layer(signal)
            b_top, h_ins = labels, []
            for layer in reversed(self.body):
                if isinstance(layer, BPLayer):
                    st = states[layer]
                    b_top, h_in = layer.mp_backward(st, b_top)
                    st.b = b_top  # None for the first layer
                    h_ins.append(h_in)
                elif isinstance(layer, BPMaxPool2d):
                    b_top = layer.down_field(pooled[layer], b_top)
                else:  # b unflattened going down
                    b_top = b_top.reshape(shapes.pop())
            h_ins.reverse()
            if self.h_in_reduction is not None:
                self.h_in_reduction(h_ins)
            deltas = [layer.mp_update(states[layer], h_in) for layer, h_in in zip(layers, h_ins)]
            self._update_reinforcement(r_step)
        return torch.stack(deltas).max()

    def _update_reinforcement(self, r_step: float) -> None:
        # r ← 1 − (1 − r)(1 − r_step) after the first 10 inner iterations (docs §5.1).
        self.reinforcement_calls += 1
        if r_step and self.reinforcement_calls > 10:
            for layer in self.bp_layers:
                layer.r = 1.0 - (1.0 - layer.r) * (1.0 - r_step)

    # ---- prediction ----------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Point-wise prediction: class indices [B] (argmax output) or ±1 [B] (sign output)."""
        return self.predict(x, mode="pointwise")

    @torch.no_grad()
    def predict(self, x: Tensor, mode: str = "pointwise", chunk: int = 8192) -> Tensor:
        """Predictions for a batch of any size, in chunks: class indices [B] (argmax output)
        or ±1 [B] (sign output), the decision on :meth:`scores`.

        mode="pointwise": W = sign(m), x ← sign(W x + 1e-10) through the hidden layers (every
        layer's forward).  mode="bayes": moment propagation through the weight marginals (§6).
        """
        return self.decide(self.scores(x, mode, chunk))

    @torch.no_grad()
    def scores(self, x: Tensor, mode: str = "pointwise", chunk: int = 8192) -> Tensor:
        """The outputs the prediction decides on, [B, K] (K = 1 for a sign output): the output
        layer's preactivation W x (point-wise) or its output means x̂ ∈ [−1, 1] (Bayesian).
        Averaging them over networks gives an ensemble (:func:`ensemble_predict`)."""
        if mode not in ("pointwise", "bayes"):
            raise ValueError(f"mode must be 'pointwise' or 'bayes', got {mode!r}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        x = self.check_inputs(x)
        return torch.cat([self._scores_chunk(x[i:i + chunk], mode)
                          for i in range(0, x.shape[0], chunk)])

    def decide(self, z: Tensor) -> Tensor:
        """Scores [B, K] -> predictions [B]: argmax_k (argmax output), or ±1 by the sign of
        the single score (ties give +1)."""
        if self.bp_layers[-1].output == "argmax":
            return z.argmax(dim=1)
        return torch.where(z[:, 0] >= 0, 1.0, -1.0).to(z.dtype)

    def _scores_chunk(self, x: Tensor, mode: str) -> Tensor:
        if mode == "bayes":
            x_hat, delta = x, None
            for layer in self.body:
                if isinstance(layer, (BPLayer, BPMaxPool2d)):
                    x_hat, delta = layer.bayes(x_hat, delta)
                else:
                    x_hat, delta = layer(x_hat), None if delta is None else layer(delta)
            return x_hat
        z = x
        for layer in self.body:
            z = layer(z)
        return z

    @torch.no_grad()
    def error(self, x: Tensor, y: Tensor, mode: str = "pointwise") -> float:
        """Fraction of misclassified samples; y as :meth:`bp_step` takes it ([B] classes or ±1)."""
        return self.error_of(self.predict(x, mode), y)

    def error_of(self, pred: Tensor, y: Tensor) -> float:
        """Fraction of the predictions pred [B] (of this network's outputs) that miss y."""
        y = self.check_labels(y, pred.shape[0])
        return float((pred != y.reshape(-1).to(pred.dtype)).double().mean())


def _check_ensemble(models: list[BPSequential]) -> None:
    """Refuses an empty ensemble and one whose members have different outputs."""
    if not models:
        raise ValueError("an ensemble needs at least one model")
    outputs = {(m.bp_layers[-1].output, m.num_classes) for m in models}
    if len(outputs) > 1:
        raise ValueError(f"the models of an ensemble must have the same outputs, got {sorted(outputs, key=str)}")


def _decide_on_mean(models: list[BPSequential], scores: list[Tensor]) -> Tensor:
    """The ensemble's decision [B] on the mean of its members' scores (each [B, K])."""
    return models[0].decide(torch.stack(scores).mean(dim=0))


@torch.no_grad()
def ensemble_predict(models: list[BPSequential], x: Tensor, mode: str = "bayes") -> Tensor:
    """The prediction of an ensemble of networks of the same outputs (e.g. one per seed),
    [B]: the decision on the mean of their :meth:`BPSequential.scores`. In Bayesian mode this
    averages the predictive means x̂ of every network's posterior, a mixture of posteriors."""
    _check_ensemble(models)
    return _decide_on_mean(models, [m.scores(x, mode) for m in models])


def ensemble_error(models: list[BPSequential], x: Tensor, y: Tensor, mode: str = "bayes") -> float:
    """Fraction of samples that the ensemble's prediction (:func:`ensemble_predict`) misses; y
    as :meth:`BPSequential.bp_step` takes it."""
    pred = ensemble_predict(models, x, mode)  # refuses an empty or mismatched ensemble
    return models[0].error_of(pred, y)


@torch.no_grad()
def ensemble_errors(models: list[BPSequential], x: Tensor, y: Tensor,
                    mode: str = "bayes") -> tuple[float, list[float]]:
    """The error of the ensemble (:func:`ensemble_error`) and of each member on x [B, ...],
    y [B], from one pass of every member over x."""
    _check_ensemble(models)
    scores = [m.scores(x, mode) for m in models]
    return (models[0].error_of(_decide_on_mean(models, scores), y),
            [m.error_of(m.decide(z), y) for m, z in zip(models, scores)])
