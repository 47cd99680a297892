"""Fake (meta) kernels of the bpkernels operators, so that torch.compile, FakeTensor tracing
and torch.library.opcheck see their output shapes. Imported for its side effects.

Each fake validates its arguments as the real kernels do (csrc/checks.cpp: defined, float32 or
float64, one dtype and device, the shapes of the schema, contiguous where updated in place), with
the same messages, so that a mismatched call fails at tracing time and not in the compiled
graph. The checks use torch._check, which also accepts symbolic sizes."""

import torch

_lib = "bpkernels::"
_ANY = None  # a size that may take any value
# dtypes as c10::ScalarType prints them, so that the messages match the real kernels'.
_C10_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
              torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
              torch.bool: "Bool"}


def _dtype(t):
    return _C10_NAMES.get(t.dtype, str(t.dtype))


class _Check:
    """The fake-side twin of csrc/checks.h's ArgChecker: validates tensors of one operator
    against a reference tensor (dtype and device)."""

    def __init__(self, op, ref, ref_name):
        self.op, self.ref = op, ref
        torch._check(ref is not None, lambda: f"{op}: {ref_name} must be a defined tensor")
        torch._check(ref.dtype in (torch.float32, torch.float64),
                     lambda: f"{op}: {ref_name} must be float32 or float64, got {_dtype(ref)}")

    def __call__(self, t, name, sizes, dims):
        op = self.op
        torch._check(t is not None, lambda: f"{op}: {name} must be a defined tensor")
        expected = "[" + ", ".join("*" if s is _ANY else str(s) for s in sizes) + "]"
        msg = lambda: f"{op}: {name} must have shape {dims} = {expected}, got {list(t.shape)}"  # noqa: E731
        torch._check(t.dim() == len(sizes), msg)
        for d, size in enumerate(sizes):
            if size is not _ANY:
                torch._check(t.shape[d] == size, msg)
        torch._check(t.dtype == self.ref.dtype, lambda: f"{op}: {name} must have dtype {_dtype(self.ref)} "
                     f"(like the other inputs), got {_dtype(t)}")
        torch._check(t.device == self.ref.device, lambda: f"{op}: {name} must be on device "
                     f"{self.ref.device} (like the other inputs), got {t.device}")

    def inplace(self, t, name, sizes, dims):
        self(t, name, sizes, dims)
        torch._check(t.is_contiguous(), lambda: f"{self.op}: {name} is updated in place and must be contiguous")


def _layer(check, x_hat, delta, mag, mask, x_name="x_hat"):
    """x_hat [B, N] with B > 0, mag [K, N], delta [B, N] and mask [K, N] optional -> (B, N, K)."""
    check(x_hat, x_name, (_ANY, _ANY), "[B, N]")
    B, N = x_hat.shape
    torch._check(B > 0, lambda: f"{check.op}: the batch is empty ({x_name} has B = 0 rows)")
    check(mag, "mag", (_ANY, N), "[K, N]")
    K = mag.shape[0]
    if mask is not None:
        check(mask, "mask", (K, N), "[K, N]")
    if delta is not None:
        check(delta, "delta", (B, N), "[B, N]")
    return B, N, K


def _cavity_state(check, x_in, b_cav, mag_cav):
    """x_in [B, N] with B > 0, mag_cav [K, N, B], b_cav [K, N, B] optional -> (B, N, K)."""
    check(x_in, "x_in", (_ANY, _ANY), "[B, N]")
    B, N = x_in.shape
    torch._check(B > 0, lambda: f"{check.op}: the batch is empty (x_in has B = 0 rows)")
    check(mag_cav, "mag_cav", (_ANY, N, B), "[K, N, B]")
    K = mag_cav.shape[0]
    if b_cav is not None:
        check(b_cav, "b_cav", (K, N, B), "[K, N, B]")
    return B, N, K


def _unit_messages(check, b_top, omega, var, B, K):
    for t, name in ((omega, "omega"), (var, "var"), (b_top, "b_top")):
        check(t, name, (B, K), "[B, K]")


def _per_unit(check, omega, *others):
    """omega [B, K] and every (tensor, name) of others [B, K]."""
    check(omega, "omega", (_ANY, _ANY), "[B, K]")
    for t, name in others:
        check(t, name, tuple(omega.shape), "[B, K]")


def _b_out(x, compute_b):
    return x.new_empty(x.shape[0], x.shape[1] if compute_b else 0)


@torch.library.register_fake(_lib + "bp_linear_input")
def _(u, b):
    check = _Check("bp_linear_input", u, "u")
    check(u, "u", (_ANY, _ANY), "[B, N]")
    if b is not None:
        check(b, "b", tuple(u.shape), "[B, N]")
    return torch.empty_like(u), torch.empty_like(u)


@torch.library.register_fake(_lib + "bp_linear_fwd")
def _(x_hat, delta, mag, mask):
    _layer(_Check("bp_linear_fwd", x_hat, "x_hat"), x_hat, delta, mag, mask)
    out = x_hat.new_empty(x_hat.shape[0], mag.shape[0])
    return out, torch.empty_like(out), torch.empty_like(out)


@torch.library.register_fake(_lib + "bp_linear_fwd_amp")
def _(x_hat, delta, mag, mask, g_old, x_hat_old, mag_old):
    check = _Check("bp_linear_fwd_amp", x_hat, "x_hat")
    B, N, K = _layer(check, x_hat, delta, mag, mask)
    check(g_old, "g_old", (B, K), "[B, K]")
    check(x_hat_old, "x_hat_old", (B, N), "[B, N]")
    check(mag_old, "mag_old", (K, N), "[K, N]")
    out = x_hat.new_empty(x_hat.shape[0], mag.shape[0])
    return out, torch.empty_like(out), torch.empty_like(out)


@torch.library.register_fake(_lib + "bp_upfield")
def _(omega, var):
    _per_unit(_Check("bp_upfield", omega, "omega"), omega, (var, "var"))
    return torch.empty_like(omega)


@torch.library.register_fake(_lib + "bp_output")
def _(b_top, omega, var, hard):
    _per_unit(_Check("bp_output", omega, "omega"), omega, (var, "var"), (b_top, "b_top"))
    return torch.empty_like(omega), torch.empty_like(omega)


@torch.library.register_fake(_lib + "bp_argmax_output")
def _(omega, var, labels):
    _per_unit(_Check("bp_argmax_output", omega, "omega"), omega, (var, "var"))
    B = omega.shape[0]
    torch._check(labels.dtype == torch.int64 and labels.dim() == 1 and labels.shape[0] == B,
                 lambda: f"bp_argmax_output: labels must be an int64 tensor of shape [B] = [{B}], got "
                 f"{_dtype(labels)} {list(labels.shape)}")
    torch._check(labels.device == omega.device,
                 lambda: f"bp_argmax_output: labels must be on device {omega.device}")
    return torch.empty_like(omega)


@torch.library.register_fake(_lib + "bp_linear_bwd_mf")
def _(g, x_hat, mag, compute_b):
    check = _Check("bp_linear_bwd_mf", x_hat, "x_hat")
    B, _, K = _layer(check, x_hat, None, mag, None)
    check(g, "g", (B, K), "[B, K]")
    return _b_out(x_hat, compute_b), x_hat.new_empty(mag.shape)


@torch.library.register_fake(_lib + "bp_linear_bwd_amp")
def _(g, gamma, x_hat, delta, mag, mask, g_old, x_hat_old, mag_old, compute_b):
    check = _Check("bp_linear_bwd_amp", x_hat, "x_hat")
    B, N, K = _layer(check, x_hat, delta, mag, mask)
    check(g, "g", (B, K), "[B, K]")
    check(gamma, "gamma", (B, K), "[B, K]")
    has_old = g_old is not None
    torch._check(has_old == (x_hat_old is not None) == (mag_old is not None),
                 lambda: "bp_linear_bwd_amp: g_old, x_hat_old and mag_old must be given together")
    if has_old:
        check(g_old, "g_old", (B, K), "[B, K]")
        check(x_hat_old, "x_hat_old", (B, N), "[B, N]")
        check(mag_old, "mag_old", (K, N), "[K, N]")
    return _b_out(x_hat, compute_b), x_hat.new_empty(mag.shape)


@torch.library.register_fake(_lib + "bp_linear_bwd_bpi")
def _(b_top, omega, var, x_hat, mag, hard, compute_b):
    check = _Check("bp_linear_bwd_bpi", x_hat, "x_hat")
    B, _, K = _layer(check, x_hat, None, mag, None)
    _unit_messages(check, b_top, omega, var, B, K)
    return _b_out(x_hat, compute_b), x_hat.new_empty(mag.shape)


@torch.library.register_fake(_lib + "bp_linear_omega_bp")
def _(x_in, b_cav, mag_cav):
    _cavity_state(_Check("bp_linear_omega_bp", x_in, "x_in"), x_in, b_cav, mag_cav)
    return x_in.new_empty(x_in.shape[0], mag_cav.shape[0])


@torch.library.register_fake(_lib + "bp_linear_bwd_bp")
def _(b_top, omega, var, x_in, b_cav, mag_cav, hard, compute_b):
    check = _Check("bp_linear_bwd_bp", x_in, "x_in")
    B, _, K = _cavity_state(check, x_in, b_cav, mag_cav)
    _unit_messages(check, b_top, omega, var, B, K)
    return _b_out(x_in, compute_b), x_in.new_empty(mag_cav.shape[0], mag_cav.shape[1])


@torch.library.register_fake(_lib + "bp_cavity_update_")
def _(mag_cav, b_cav, b_top, omega, var, x_in, b, field, mask, psi, hard):
    check = _Check("bp_cavity_update_", x_in, "x_in")
    B, N, K = _cavity_state(check, x_in, b_cav, mag_cav)
    check.inplace(mag_cav, "mag_cav", (K, N, B), "[K, N, B]")
    if b_cav is not None:
        check.inplace(b_cav, "b_cav", (K, N, B), "[K, N, B]")
    torch._check((b_cav is None) == (b is None),
                 lambda: "bp_cavity_update_: b_cav and b must be given together (hidden layers) or "
                 "both omitted (first layer)")
    if b is not None:
        check(b, "b", (B, N), "[B, N]")
    _unit_messages(check, b_top, omega, var, B, K)
    check(field, "field", (K, N), "[K, N]")
    if mask is not None:
        check(mask, "mask", (K, N), "[K, N]")
    return None


@torch.library.register_fake(_lib + "bp_field_update_")
def _(field, mag, h_in, field_prior, mask, rho, r, psi, damp_field):
    check = _Check("bp_field_update_", field, "field")
    check.inplace(field, "field", (_ANY, _ANY), "[K, N]")
    K, N = field.shape
    check.inplace(mag, "mag", (K, N), "[K, N]")
    check(h_in, "h_in", (K, N), "[K, N]")
    for t, name in ((field_prior, "field_prior"), (mask, "mask")):
        if t is not None:
            check(t, name, (K, N), "[K, N]")
    return field.new_empty(())


@torch.library.register_fake(_lib + "bp_bayes_fwd")
def _(x_hat, delta, mag, mask):
    _layer(_Check("bp_bayes_fwd", x_hat, "x_hat"), x_hat, delta, mag, mask)
    out = x_hat.new_empty(x_hat.shape[0], mag.shape[0])
    return out, torch.empty_like(out)


@torch.library.register_fake(_lib + "bp_weight_var")
def _(mag, mask):
    check = _Check("bp_weight_var", mag, "mag")
    if mask is not None:
        check(mask, "mask", tuple(mag.shape), "of mag")
    return torch.empty_like(mag, memory_format=torch.contiguous_format)


# ---- Gaussian (continuous) weight family ---------------------------------------------------

@torch.library.register_fake(_lib + "gauss_linear_fwd")
def _(x_hat, delta, mag, precision):
    check = _Check("gauss_linear_fwd", x_hat, "x_hat")
    B, N, K = _layer(check, x_hat, delta, mag, None)
    check(precision, "precision", (K, N), "[K, N]")
    out = x_hat.new_empty(B, K)
    return out, torch.empty_like(out), torch.empty_like(out)


@torch.library.register_fake(_lib + "gauss_linear_bwd_cbpi")
def _(b_top, omega, var, x_hat, delta, mag, hard, compute_b):
    check = _Check("gauss_linear_bwd_cbpi", x_hat, "x_hat")
    B, _, K = _layer(check, x_hat, delta, mag, None)
    _unit_messages(check, b_top, omega, var, B, K)
    return _b_out(x_hat, compute_b), x_hat.new_empty(mag.shape), x_hat.new_empty(mag.shape)


@torch.library.register_fake(_lib + "gauss_field_update_")
def _(field, precision, mag, h_in, omega_in, field_prior, precision_prior, rho, r, psi):
    check = _Check("gauss_field_update_", field, "field")
    check.inplace(field, "field", (_ANY, _ANY), "[K, N]")
    K, N = field.shape
    check.inplace(precision, "precision", (K, N), "[K, N]")
    check.inplace(mag, "mag", (K, N), "[K, N]")
    check(h_in, "h_in", (K, N), "[K, N]")
    check(omega_in, "omega_in", (K, N), "[K, N]")
    torch._check((field_prior is None) == (precision_prior is None),
                 lambda: "gauss_field_update_: field_prior and precision_prior must be given "
                 "together (a fixed prior (H, Ω)) or both be None (PasP: the prior is the current "
                 "(H, Ω))")
    for t, name in ((field_prior, "field_prior"), (precision_prior, "precision_prior")):
        if t is not None:
            check(t, name, (K, N), "[K, N]")
    return field.new_empty(())


# ---- packed (XNOR-popcount) inference ------------------------------------------------------

@torch.library.register_fake(_lib + "xnor_im2col")
def _(z, kernel_size, stride, padding):
    batch, height, width, channels = z.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    positions = ((height + 2 * ph - kh) // sh + 1) * ((width + 2 * pw - kw) // sw + 1)
    words = (kh * kw * channels + 63) // 64
    return (z.new_empty(batch * positions, words, dtype=torch.int64),
            z.new_empty(positions, words, dtype=torch.int64))


@torch.library.register_fake(_lib + "xnor_gemm")
def _(x, w, x_valid, w_nonzero, n):
    torch._check(x.shape[1] == w.shape[1])
    return x.new_empty(x.shape[0], w.shape[0], dtype=torch.int32)
