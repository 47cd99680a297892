"""Fake (meta) kernels of the bpkernels operators, so that torch.compile, FakeTensor tracing
and torch.library.opcheck see their output shapes. Imported for its side effects."""

import torch

_lib = "bpkernels::"


def _b_out(x, compute_b):
    return x.new_empty(x.shape[0], x.shape[1] if compute_b else 0)


@torch.library.register_fake(_lib + "bp_linear_input")
def _(u, b):
    return torch.empty_like(u), torch.empty_like(u)


@torch.library.register_fake(_lib + "bp_linear_fwd")
def _(x_hat, delta, mag, mask):
    torch._check(x_hat.shape[1] == mag.shape[1])
    out = x_hat.new_empty(x_hat.shape[0], mag.shape[0])
    return out, torch.empty_like(out), torch.empty_like(out)


@torch.library.register_fake(_lib + "bp_linear_fwd_amp")
def _(x_hat, delta, mag, mask, g_old, x_hat_old, mag_old):
    out = x_hat.new_empty(x_hat.shape[0], mag.shape[0])
    return out, torch.empty_like(out), torch.empty_like(out)


@torch.library.register_fake(_lib + "bp_upfield")
def _(omega, var):
    return torch.empty_like(omega)


@torch.library.register_fake(_lib + "bp_output")
def _(b_top, omega, var, hard):
    return torch.empty_like(omega), torch.empty_like(omega)


@torch.library.register_fake(_lib + "bp_argmax_output")
def _(omega, var, labels):
    return torch.empty_like(omega)


@torch.library.register_fake(_lib + "bp_linear_bwd_mf")
def _(g, x_hat, mag, compute_b):
    return _b_out(x_hat, compute_b), x_hat.new_empty(mag.shape)


@torch.library.register_fake(_lib + "bp_linear_bwd_amp")
def _(g, gamma, x_hat, delta, mag, mask, g_old, x_hat_old, mag_old, compute_b):
    return _b_out(x_hat, compute_b), x_hat.new_empty(mag.shape)


@torch.library.register_fake(_lib + "bp_linear_bwd_bpi")
def _(b_top, omega, var, x_hat, mag, hard, compute_b):
    return _b_out(x_hat, compute_b), x_hat.new_empty(mag.shape)


@torch.library.register_fake(_lib + "bp_linear_omega_bp")
def _(x_in, b_cav, mag_cav):
    return x_in.new_empty(x_in.shape[0], mag_cav.shape[0])


@torch.library.register_fake(_lib + "bp_linear_bwd_bp")
def _(b_top, omega, var, x_in, b_cav, mag_cav, hard, compute_b):
    return _b_out(x_in, compute_b), x_in.new_empty(mag_cav.shape[0], mag_cav.shape[1])


@torch.library.register_fake(_lib + "bp_cavity_update_")
def _(mag_cav, b_cav, b_top, omega, var, x_in, b, field, mask, psi, hard):
    return None


@torch.library.register_fake(_lib + "bp_field_update_")
def _(field, mag, h_in, field_prior, mask, rho, r, psi, damp_field):
    return field.new_empty(())


@torch.library.register_fake(_lib + "bp_bayes_fwd")
def _(x_hat, delta, mag, mask):
    out = x_hat.new_empty(x_hat.shape[0], mag.shape[0])
    return out, torch.empty_like(out)


@torch.library.register_fake(_lib + "bp_weight_var")
def _(mag, mask):
    return torch.empty_like(mag, memory_format=torch.contiguous_format)


# ---- Gaussian (continuous) weight family ---------------------------------------------------

@torch.library.register_fake(_lib + "gauss_linear_fwd")
def _(x_hat, delta, mag, precision):
    torch._check(x_hat.shape[1] == mag.shape[1])
    out = x_hat.new_empty(x_hat.shape[0], mag.shape[0])
    return out, torch.empty_like(out), torch.empty_like(out)


@torch.library.register_fake(_lib + "gauss_linear_bwd_cbpi")
def _(b_top, omega, var, x_hat, delta, mag, hard, compute_b):
    return _b_out(x_hat, compute_b), x_hat.new_empty(mag.shape), x_hat.new_empty(mag.shape)


@torch.library.register_fake(_lib + "gauss_field_update_")
def _(field, precision, mag, h_in, omega_in, field_prior, precision_prior, rho, r, psi):
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
