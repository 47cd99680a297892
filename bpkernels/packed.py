r"""Export of a trained binary network to a bit-packed file, and its fast XNOR-popcount runtime.

:func:`export` writes the point-wise network of a :class:`~bpkernels.sequential.BPSequential` — weights
W = sign(m) ∈ {−1, 0, +1} (0 where a weight is masked) — in the format of
``docs/packed_format.md``: a JSON header with the architecture, then one bit per weight (rows
padded to a 64-bit word), a second "nonzero" bit plane for layers with zero weights, and a
SHA-256 checksum. :func:`load_packed` reads it back as a :class:`PackedNet`, an ``nn.Module``
whose ``forward`` returns what ``model(x)`` returns: class indices [B] (int64) for an argmax
output, ±1 [B] (the model's float dtype) for a sign output.

Semantics, the same as :meth:`BPSequential.predict` in point-wise mode:

* the first layer sees the real-valued input: its preactivation is computed in floating point
  (the file's dtype) with the same torch operation as the model (``x @ Wᵀ``, or ``conv2d`` with
  zero padding) against the ±1 / 0 weights, unpacked once at load;
* every hidden layer's activation is x = sign(z + 1e-10): a zero preactivation gives +1 (the
  tie rule), so on integer z it is z ≥ 0;
* the layers after the first see ±1 inputs, so their preactivations are integers, computed
  exactly by XNOR-popcount (:func:`bpkernels.packed_ops.xnor_gemm`); zero-padded pixels and
  zero weights contribute 0;
* a max-pooling channel takes the maximum of each k×k window of the ±1 activations; since
  sign(z + 1e-10) is monotone, the runtime pools the preactivations instead;
* the output is the first maximal index of z (argmax), or +1 where z ≥ 0 (sign).

The float model's first-layer sum rounds like any float sum; the packed network reproduces it
by calling the same operation on the same shapes (chunks of 8192 samples, as the model). The
one value sign(z + 1e-10) = 0 (z exactly −1e-10 after rounding) is not representable in bits
and gives +1 here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import packed_ops
from .conv import BPConv2d
from .layers import BPLinear
from .pool import BPMaxPool2d

MAGIC = b"BPKPACK\0"
VERSION = 1
FORMAT = "bpkernels-packed"
_PREFIX = struct.Struct("<8sII")  # magic, version, header length
_DIGEST = 32  # SHA-256
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class PackedFormatError(ValueError):
    """A file that is not a valid bpkernels packed network (bad magic, version, checksum or
    header)."""


# ---- bit planes ----------------------------------------------------------------------------


def _pack_rows(bits: np.ndarray) -> np.ndarray:
    """0/1 uint8 [K, n] -> little-endian uint64 words [K, ⌈n/64⌉] (element i at bit i % 64 of
    word i // 64, padding bits 0)."""
    rows, n = bits.shape
    words = (n + 63) // 64
    padded = np.zeros((rows, words * 64), dtype=np.uint8)
    padded[:, :n] = bits
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").reshape(rows, words)


def _unpack_rows(words: np.ndarray, n: int) -> np.ndarray:
    """The inverse of :func:`_pack_rows`: uint64 [K, W] -> 0/1 uint8 [K, n]."""
    raw = np.ascontiguousarray(words, dtype="<u8").view(np.uint8)
    return np.unpackbits(raw, axis=1, bitorder="little")[:, :n]


def _planes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Sign plane (1 where w = +1) and nonzero plane (1 where w ≠ 0; None if no w is 0) of
    int8 weights [K, n] ∈ {−1, 0, +1}."""
    signs = _pack_rows((values > 0).astype(np.uint8))
    nonzero = _pack_rows((values != 0).astype(np.uint8)) if (values == 0).any() else None
    return signs, nonzero


def _as_tensor(words: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(words, dtype="<u8").view(np.int64))


# ---- export --------------------------------------------------------------------------------


def _layer_kind(layer: nn.Module) -> str:
    if isinstance(layer, BPLinear):
        return "linear"
    if isinstance(layer, BPConv2d):
        return "conv2d"
    if isinstance(layer, BPMaxPool2d):
        return "maxpool2d"
    if isinstance(layer, nn.Flatten):
        return "flatten"
    raise TypeError(f"cannot export a {type(layer).__name__} layer: a packed network holds "
                    "BPLinear, BPConv2d, BPMaxPool2d and nn.Flatten layers")


def _layer_records(model: nn.Module) -> tuple[list[dict], list[np.ndarray]]:
    """Header records of model.layers and the int8 weights [K, fan_in] of each weight layer."""
    records, weights = [], []
    shape = None  # per-sample input shape of the next weight layer
    for layer in model.layers:
        kind = _layer_kind(layer)
        if kind == "flatten":
            if shape is not None:
                if (layer.start_dim, layer.end_dim) != (1, -1):
                    raise ValueError("a packed network only flattens whole samples (nn.Flatten() "
                                     f"after a conv layer), got start_dim={layer.start_dim}, "
                                     f"end_dim={layer.end_dim}")
                shape = (math.prod(shape),)
            records.append(dict(type="flatten", start_dim=layer.start_dim, end_dim=layer.end_dim))
            continue
        if kind == "maxpool2d":  # follows a conv layer (BPSequential checks it), so shape is known
            records.append(dict(type="maxpool2d", kernel_size=layer.kernel_size,
                                input_shape=list(shape)))
            shape = layer.output_shape(shape)
            continue
        mag = layer.mag.detach().to("cpu", torch.float64)
        values = torch.sign(mag).to(torch.int8).reshape(mag.shape[0], -1).numpy()
        if kind == "linear":
            k, n = mag.shape
            if shape is not None and shape != (n,):
                raise ValueError(f"layer sizes do not chain: {list(shape)} -> {n}")
            rec = dict(type="linear", in_features=n, out_features=k, input_shape=[n],
                       output=layer.output)
            shape = (k,)
        else:
            if shape is None:
                if layer.input_size is None:
                    raise ValueError("export needs the input image size: build the first "
                                     "BPConv2d with input_size=(H, W)")
                shape = (layer.in_channels, *layer.input_size)
            if len(shape) != 3 or shape[0] != layer.in_channels:
                raise ValueError(f"a BPConv2d with {layer.in_channels} input channels cannot take "
                                 f"per-sample inputs {list(shape)}")
            (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
            out_hw = ((shape[1] + 2 * ph - kh) // sh + 1, (shape[2] + 2 * pw - kw) // sw + 1)
            rec = dict(type="conv2d", in_channels=layer.in_channels,
                       out_channels=layer.out_channels, kernel_size=[kh, kw], stride=[sh, sw],
                       padding=[ph, pw], input_shape=list(shape), output=None)
            shape = (layer.out_channels, *out_hw)
        records.append(rec)
        weights.append(values)
    return records, weights


def export(model: nn.Module, path: str | os.PathLike) -> dict:
    """Writes the point-wise network of ``model`` (a BPSequential) to a packed file.

    Args:
        model: layers BPLinear / BPConv2d / BPMaxPool2d / nn.Flatten in ``model.layers``; a
            first BPConv2d needs ``input_size``.
        path: the file to write (format: ``docs/packed_format.md``).
    Returns:
        The header (a dict) that was written.
    """
    records, weights = _layer_records(model)
    bp = [r for r in records if r["type"] in ("linear", "conv2d")]
    if not bp or bp[-1]["output"] not in ("sign", "argmax"):
        raise ValueError("the last weight layer must be an output layer (output='sign' or 'argmax')")
    first = next(layer for layer in model.layers if isinstance(layer, (BPLinear, BPConv2d)))
    dtype = str(first.mag.dtype).replace("torch.", "")
    if dtype not in _DTYPES:
        raise ValueError(f"the model's dtype must be float32 or float64, got {dtype}")
    blobs, offset = [], 0
    for rec, values in zip(bp, weights):
        signs, nonzero = _planes(values)
        planes = {"signs": signs, "nonzero": nonzero}
        rec["words_per_row"] = int(signs.shape[1])
        for name, plane in planes.items():
            if plane is None:
                rec[name] = None
                continue
            data = plane.astype("<u8").tobytes()
            rec[name] = dict(offset=offset, nbytes=len(data))
            blobs.append(data)
            offset += len(data)
    header = dict(format=FORMAT, version=VERSION, dtype=dtype, layers=records)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(_PREFIX.size + len(text)) % 8)  # payload starts 8-byte aligned
    body = _PREFIX.pack(MAGIC, VERSION, len(text)) + text + b"".join(blobs)
    with open(path, "wb") as f:
        f.write(body + hashlib.sha256(body).digest())
    return header


# ---- load ----------------------------------------------------------------------------------


def read_packed(path: str | os.PathLike) -> tuple[dict, bytes]:
    """The header and the payload of a packed file, after checking magic, version and checksum."""
    with open(path, "rb") as f:
        data = f.read()
    where = os.fspath(path)
    if len(data) < _PREFIX.size + _DIGEST or data[:8] != MAGIC:
        raise PackedFormatError(f"{where} is not a bpkernels packed network (bad magic)")
    if hashlib.sha256(data[:-_DIGEST]).digest() != data[-_DIGEST:]:
        raise PackedFormatError(f"{where}: checksum mismatch, the file is corrupted or truncated")
    _, version, length = _PREFIX.unpack_from(data)
    if version != VERSION:
        raise PackedFormatError(f"{where}: format version {version}, this bpkernels reads {VERSION}")
    start = _PREFIX.size + length
    try:
        header = json.loads(data[_PREFIX.size:start])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackedFormatError(f"{where}: unreadable header ({exc})") from None
    if header.get("format") != FORMAT or header.get("dtype") not in _DTYPES:
        raise PackedFormatError(f"{where}: not a {FORMAT} header or unknown dtype")
    return header, data[start:-_DIGEST]


def _plane(payload: bytes, ref: dict | None, rows: int, n: int, what: str) -> np.ndarray | None:
    if ref is None:
        return None
    words = (n + 63) // 64
    start, nbytes = ref["offset"], ref["nbytes"]
    if nbytes != rows * words * 8 or start < 0 or start + nbytes > len(payload):
        raise PackedFormatError(f"{what}: plane of {nbytes} bytes at {start} does not hold "
                                f"[{rows}, {words}] words")
    plane = np.frombuffer(payload, dtype="<u8", count=rows * words, offset=start).reshape(rows, words)
    if n % 64 and (plane[:, -1] >> np.uint64(n % 64)).any():
        raise PackedFormatError(f"{what}: padding bits past bit {n} are not 0")
    return plane


def load_packed(path: str | os.PathLike, device=None) -> "PackedNet":
    """Reads a file written by :func:`export` as a :class:`PackedNet` (on ``device``, CPU by
    default)."""
    header, payload = read_packed(path)
    try:
        net = PackedNet(header, payload)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, PackedFormatError):
            raise
        raise PackedFormatError(f"{os.fspath(path)}: bad layer records ({exc!r})") from None
    return net.to(device) if device is not None else net


class PackedNet(nn.Module):
    """A binary network on XNOR-popcount kernels, built from a packed file's header and payload
    (use :func:`load_packed`). ``forward(x)`` takes what the exported model takes — [B, N] for a
    dense-first network, [B, C, H, W] or [B, C·H·W] for a conv-first one, before any leading
    nn.Flatten — and returns class indices [B] (int64) or ±1 [B] (the file's dtype).

    Buffers: ``weight0`` [K, fan_in...] float ±1 / 0 weights of the first layer; per later layer
    ``signs{l}`` / ``nonzero{l}`` int64 [K, ⌈fan_in/64⌉] bit planes, fan-in ordered (i, j, c)
    (tap, channel) as :func:`bpkernels.packed_ops.xnor_im2col` gathers it.
    """

    def __init__(self, header: dict, payload: bytes):
        super().__init__()
        self.header = header
        self.dtype = _DTYPES[header["dtype"]]
        layers = header["layers"]
        self.prelude = [nn.Flatten(r["start_dim"], r["end_dim"]) for r in
                        layers[:next(i for i, r in enumerate(layers) if r["type"] != "flatten")]]
        self.stages: list[dict] = []
        prev = None  # per-sample output shape of the previous weight layer, (C, H, W) or (N,)
        for index, rec in enumerate(r for r in layers if r["type"] != "flatten"):
            stage = self._stage(rec, index, prev, payload)
            self.stages.append(stage)
            prev = stage["out_shape"]
        if self.stages[-1]["output"] not in ("sign", "argmax"):
            raise PackedFormatError("the last layer must be an output layer")
        if any(s["output"] is not None for s in self.stages[:-1]):
            raise PackedFormatError("only the last layer may be an output layer")

    def _stage(self, rec: dict, index: int, prev: tuple | None, payload: bytes) -> dict:
        what = f"layer {index} ({rec['type']})"
        if rec["type"] == "maxpool2d":
            return self._pool_stage(rec, what, prev)
        if rec["type"] == "linear":
            k, n = rec["out_features"], rec["in_features"]
            stage = dict(kind="linear", k=k, n=n, in_shape=(n,), out_shape=(k,),
                         kernel=(1, 1), stride=(1, 1), padding=(0, 0))
        elif rec["type"] == "conv2d":
            c, k = rec["in_channels"], rec["out_channels"]
            (kh, kw), (sh, sw), (ph, pw) = rec["kernel_size"], rec["stride"], rec["padding"]
            in_shape = tuple(rec["input_shape"])
            oh, ow = (in_shape[1] + 2 * ph - kh) // sh + 1, (in_shape[2] + 2 * pw - kw) // sw + 1
            if in_shape[0] != c or oh < 1 or ow < 1:
                raise PackedFormatError(f"{what}: kernel {kh}×{kw} does not fit input {list(in_shape)}")
            stage = dict(kind="conv2d", k=k, n=c * kh * kw, in_shape=in_shape, out_shape=(k, oh, ow),
                         kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw))
        else:
            raise PackedFormatError(f"{what}: unknown layer type")
        stage["output"] = rec.get("output")
        if prev is not None and math.prod(prev) != math.prod(stage["in_shape"]):
            raise PackedFormatError(f"{what}: input {list(stage['in_shape'])} does not chain to "
                                    f"the previous output {list(prev)}")
        if rec["words_per_row"] != (stage["n"] + 63) // 64:
            raise PackedFormatError(f"{what}: words_per_row {rec['words_per_row']} for {stage['n']} bits")
        signs = _plane(payload, rec["signs"], stage["k"], stage["n"], what + " signs")
        if signs is None:
            raise PackedFormatError(f"{what}: no sign plane")
        nonzero = _plane(payload, rec["nonzero"], stage["k"], stage["n"], what + " nonzero")
        values = _unpack_rows(signs, stage["n"]).astype(np.int8) * 2 - 1
        if nonzero is not None:
            values *= _unpack_rows(nonzero, stage["n"]).astype(np.int8)
        if index == 0:
            shape = (stage["k"], *((stage["n"],) if stage["kind"] == "linear"
                                   else (stage["in_shape"][0], *stage["kernel"])))
            self.register_buffer("weight0", torch.from_numpy(values).to(self.dtype).reshape(shape))
            return stage
        # Reorder the fan-in to the (tap, channel) order of xnor_im2col: (c, i, j) -> (i, j, c)
        # for a conv; for a dense layer after a conv, the flatten order (c, h, w) -> (h, w, c).
        if stage["kind"] == "conv2d":
            values = values.reshape(stage["k"], stage["in_shape"][0], *stage["kernel"])
        elif prev is not None and len(prev) == 3:
            values = values.reshape(stage["k"], *prev)
            stage["kernel"] = tuple(prev[1:])
        if values.ndim == 4:
            values = values.transpose(0, 2, 3, 1).reshape(stage["k"], -1)
        signs, nonzero = _planes(values)
        self.register_buffer(f"signs{index}", _as_tensor(signs))
        self.register_buffer(f"nonzero{index}", None if nonzero is None else _as_tensor(nonzero))
        stage["padded"] = stage["padding"] != (0, 0)
        return stage

    @staticmethod
    def _pool_stage(rec: dict, what: str, prev: tuple | None) -> dict:
        k, in_shape = rec["kernel_size"], tuple(rec["input_shape"])
        if prev is None or len(prev) != 3 or in_shape != prev:
            raise PackedFormatError(f"{what}: pools the images of a conv layer before it, got "
                                    f"input {list(in_shape)} after {prev and list(prev)}")
        if not isinstance(k, int) or k < 1 or min(in_shape[1:]) < k:
            raise PackedFormatError(f"{what}: window {k} does not fit input {list(in_shape)}")
        return dict(kind="maxpool2d", k=k, in_shape=in_shape, output=None,
                    out_shape=(in_shape[0], in_shape[1] // k, in_shape[2] // k))

    def extra_repr(self) -> str:
        return " -> ".join(f"{s['kind']}{list(s['out_shape'])}" for s in self.stages)

    # ---- forward -------------------------------------------------------------------------

    def _prepare_x(self, x: Tensor) -> Tensor:
        for flatten in self.prelude:
            x = flatten(x)
        in_shape = self.stages[0]["in_shape"]
        if len(in_shape) == 3 and x.dim() == 2 and x.shape[1] == math.prod(in_shape):
            x = x.reshape(x.shape[0], *in_shape)
        if tuple(x.shape[1:]) != in_shape:
            flat = f" or [B, {math.prod(in_shape)}]" if len(in_shape) == 3 else ""
            raise ValueError(f"input must have shape [B, {', '.join(map(str, in_shape))}]{flat}, "
                             f"got {list(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("the batch is empty")
        # detached: no autograd graph (the kernels have no derivative; this replaces no_grad)
        x = x.detach().to(device=self.weight0.device, dtype=self.dtype).contiguous()
        # A NaN or ±inf makes the sum non-finite, so one reduction clears the usual case.
        if not math.isfinite(float(x.sum())) and not torch.isfinite(x).all():
            raise ValueError("the input contains NaN or infinite values")
        return x

    def _layer(self, index: int, z: Tensor) -> Tensor:
        """Preactivation of layer `index` given the previous one's, NHWC [B, H, W, C] (int32
        or, after the first layer, float). Returns NHWC [B, OH, OW, K] int32."""
        stage = self.stages[index]
        bits, valid = packed_ops.xnor_im2col(z, stage["kernel"], stage["stride"], stage["padding"])
        out = packed_ops.xnor_gemm(bits, getattr(self, f"signs{index}"),
                                   valid if stage["padded"] else None,
                                   getattr(self, f"nonzero{index}"), stage["n"])
        k, *hw = stage["out_shape"]
        return out.view(z.shape[0], *(hw or (1, 1)), k)

    def _pool(self, index: int, z: Tensor) -> Tensor:
        """k×k max pooling of the preactivations NHWC [B, H, W, C] -> [B, H // k, W // k, C]:
        sign(z + 1e-10) is monotone, so this pools the ±1 activations as the model does."""
        k = self.stages[index]["k"]
        b, h, w, c = z.shape
        z = z[:, :h // k * k, :w // k * k].reshape(b, h // k, k, w // k, k, c)
        return z.amax(dim=(2, 4))

    def _first(self, x: Tensor) -> Tensor:
        """The first layer in floating point (as the model), NHWC [B, OH, OW, K] view."""
        stage = self.stages[0]
        if stage["kind"] == "linear":
            z = x @ self.weight0.T
            return z.view(z.shape[0], 1, 1, z.shape[1])
        z = F.conv2d(x, self.weight0, stride=stage["stride"], padding=stage["padding"])
        return z.permute(0, 2, 3, 1)

    def _chunk_preactivations(self, x: Tensor) -> list[Tensor]:
        zs = [self._first(x)]
        for index in range(1, len(self.stages)):
            pool = self.stages[index]["kind"] == "maxpool2d"
            zs.append((self._pool if pool else self._layer)(index, zs[-1]))
        return zs

    def preactivations(self, x: Tensor) -> list[Tensor]:
        """Every layer's preactivation in the model's layout ([B, K] or [B, K, OH, OW]; a
        max-pooling stage gives the pooled preactivations of the layer before it): the first
        in floating point, the others int32."""
        zs = self._chunk_preactivations(self._prepare_x(x))
        return [z.permute(0, 3, 1, 2) if len(s["out_shape"]) == 3 else z.reshape(z.shape[0], -1)
                for z, s in zip(zs, self.stages)]

    def _predict_chunk(self, x: Tensor) -> Tensor:
        z = self._chunk_preactivations(x)[-1]
        z = z.reshape(z.shape[0], -1)
        if self.stages[-1]["output"] == "argmax":
            return z.argmax(dim=1)
        return torch.where(z[:, 0] >= 0, 1.0, -1.0).to(self.dtype)

    def forward(self, x: Tensor, chunk: int = 8192) -> Tensor:
        """Predictions: class indices [B] (argmax output) or ±1 [B] (sign output)."""
        x = self._prepare_x(x)
        if x.shape[0] <= chunk:
            return self._predict_chunk(x)
        return torch.cat([self._predict_chunk(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])

    def error(self, x: Tensor, y: Tensor) -> float:
        """Fraction of misclassified samples."""
        pred = self(x)
        return float((pred != y.to(pred.device, pred.dtype)).double().mean())
