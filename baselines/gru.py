"""The GRU recurrence over whole episodes with a hand-written backward pass (BPTT), for CPU.

PyTorch's CPU ``nn.GRU`` runs its forward loop in C++, but autograd records every time step as a
chain of small ops, and its backward concatenates the three gate gradients, copies, and does two
small matrix products per step (``dh_prev`` and ``dW_hh += dG_t^T h_{t-1}``). Profiled on a
128-episode predator-prey batch (1 024 sequences of 201 steps), the per-step concatenation alone
was a fifth of the update. :class:`GRUSequence` does the same arithmetic with less around it:

    forward, per chunk of steps
                      g_i = x W_ih^T + b_ih (+ b_hh's r, z parts)    one product for the chunk's steps
      per step        g_h = h W_hh^T                                  one small product
                      r, z = σ(g_i[r,z] + g_h[r,z]),  n = tanh(g_i[n] + r ⊙ (g_h[n] + b_hn))
                      h = n + z ⊙ (h_prev - n)
    backward, per chunk of steps from the last
      per step        gate gradients dG_t from dh (elementwise, into preallocated buffers) and
                      dh_prev = dh_out[t-1] + dh ⊙ z + dG_t W_hh      one small product, in place
      after the chunk dx, and the chunk's share of dW_hh, db_hh, dW_ih, db_ih: products over its steps

A chunk is about ``CHUNK_ROWS`` (steps x sequences) rows, so its gate pre-activations and
gradients are still in cache when they are read back; whole-episode buffers of a 128-episode batch
(tens of MB) streamed through memory and made the update slower than a GRUCell loop. A sequence
that fits in one chunk gets exactly the products of a single pass.

Gate order and formulas are ``nn.GRU``'s (r, z, n; ``b_hn`` inside the reset product) and the
parameters are the module's own tensors, so acting (``nn.GRU``, one step) and training share them;
the result equals a GRUCell loop to float rounding (tests against :mod:`ctmarl_baselines.reference`
and ``nn.GRU``). Layout is time-major (``x`` [T, B, I], ``h0`` [B, H], states [T, B, H]) so each step
reads and writes contiguous blocks. Scratch tensors are allocated once per call: at 1 024
sequences, a fresh [B, H] temporary per op and step is returned to the OS each time and its page
faults cost more than the arithmetic. Measured speed: ``benchmarks/bench_learners.py``.
"""

from __future__ import annotations

import torch
from torch import nn


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """In-place tanh as 2σ(2x) - 1: the same values to float rounding, and several times faster
    than ``torch.tanh`` on the CPU builds we measured (sigmoid is vectorised, tanh was not)."""
    return torch.sigmoid_(x.mul_(2.0)).mul_(2.0).sub_(1.0)


#: Rows (time steps x sequences) per chunk of the unroll: the input projection of a chunk, and in the
#: backward pass its gate gradients, are made just before they are used, so they are read back
#: from cache instead of memory (4 096 rows x 3H floats = 3 MiB at H = 64).
CHUNK_ROWS = 4096


def _chunk_steps(batch: int) -> int:
    """Time steps per chunk: about ``CHUNK_ROWS`` rows of ``batch`` sequences."""
    return max(1, CHUNK_ROWS // batch)


def _forward(x, h0, w_ih, w_hh, b_ih, b_hh, keep: bool):
    """Hidden states [T, B, H]; with ``keep`` also the step buffers the backward pass needs."""
    steps, batch, _ = x.shape
    three_h = w_hh.shape[0]
    h_dim = three_h // 3
    two_h = 2 * h_dim
    # b_hh's r and z parts are added to the gates like b_ih's: fold them into the input projection.
    bias = torch.cat([b_ih[:two_h] + b_hh[:two_h], b_ih[two_h:]])
    chunk = _chunk_steps(batch)
    gi_buf = x.new_empty(min(chunk, steps) * batch, three_h)
    b_hn = b_hh[two_h:]
    hs = x.new_empty(steps, batch, h_dim)
    gh = x.new_empty(batch, three_h)
    if keep:
        ghn_all = x.new_empty(steps, batch, h_dim)
        rz_all = x.new_empty(steps, batch, two_h)
        n_all = x.new_empty(steps, batch, h_dim)
    else:
        ghn_buf = x.new_empty(batch, h_dim)
        rz_buf = x.new_empty(batch, two_h)
        n_buf = x.new_empty(batch, h_dim)
    w_t, w_ih_t = w_hh.t(), w_ih.t()
    h = h0
    for start in range(0, steps, chunk):
        stop = min(steps, start + chunk)
        rows = (stop - start) * batch
        gi = torch.addmm(bias, x[start:stop].reshape(rows, -1), w_ih_t, out=gi_buf[:rows]).view(-1, batch, three_h)
        for t in range(start, stop):
            gi_t = gi[t - start]
            torch.mm(h, w_t, out=gh)
            rz = torch.add(gi_t[:, :two_h], gh[:, :two_h], out=rz_all[t] if keep else rz_buf).sigmoid_()
            ghn = torch.add(gh[:, two_h:], b_hn, out=ghn_all[t] if keep else ghn_buf)
            n = _tanh_(torch.addcmul(gi_t[:, two_h:], rz[:, :h_dim], ghn, out=n_all[t] if keep else n_buf))
            h = torch.lerp(n, h, rz[:, h_dim:], out=hs[t])
    return (hs, ghn_all, rz_all, n_all) if keep else (hs,)


class GRUSequence(torch.autograd.Function):
    """``(x [T,B,I], h0 [B,H], W_ih [3H,I], W_hh [3H,H], b_ih [3H], b_hh [3H]) -> hidden states
    [T,B,H]``, the parameters being ``nn.GRU``'s ``*_l0`` tensors."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh):
        hs, ghn_all, rz_all, n_all = _forward(x, h0, w_ih, w_hh, b_ih, b_hh, keep=True)
        ctx.save_for_backward(x, h0, w_ih, w_hh, hs, ghn_all, rz_all, n_all)
        return hs

    @staticmethod
    def backward(ctx, dhs):
        x, h0, w_ih, w_hh, hs, ghn_all, rz_all, n_all = ctx.saved_tensors
        steps, batch, h_dim = hs.shape
        two_h = 2 * h_dim
        chunk = min(_chunk_steps(batch), steps)
        # Per-chunk gate gradients: dL/dg_h [dr_pre, dz_pre, dn_pre ⊙ r] and dL/d(pre-tanh n)
        # (= dL/dg_i[n]); per-step scratch. All allocated once: a fresh allocation of this size per
        # op and step goes back to the OS each time, and its page faults cost more than the arithmetic.
        dgh_buf = hs.new_empty(chunk, batch, 3 * h_dim)
        dn_buf = hs.new_empty(chunk, batch, h_dim)
        dh, dn, tmp = (hs.new_empty(batch, h_dim) for _ in range(3))
        drz, sig = hs.new_empty(batch, two_h), hs.new_empty(batch, two_h)
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        # Sums over the chunks, so zeros to start: adding a product to zero is exact, and one chunk
        # (a short sequence) gives the very products of a single pass.
        dw_ih, dw_hh = torch.zeros_like(w_ih), torch.zeros_like(w_hh)
        db_ih, db_hh = w_ih.new_zeros(3 * h_dim), w_hh.new_zeros(3 * h_dim)
        dh.copy_(dhs[-1])
        last_start = (steps - 1) // chunk * chunk
        for start in range(last_start, -1, -chunk):
            stop = min(steps, start + chunk)
            for t in range(stop - 1, start - 1, -1):
                rz, n = rz_all[t], n_all[t]
                r, z = rz[:, :h_dim], rz[:, h_dim:]
                h_prev = hs[t - 1] if t > 0 else h0
                dgh = dgh_buf[t - start]
                torch.addcmul(dh, dh, z, value=-1.0, out=dn)  # dL/dn = dh ⊙ (1 - z)
                dn_pre = torch.addcmul(dn, dn, torch.mul(n, n, out=tmp), value=-1.0, out=dn_buf[t - start])  # ⊙ (1 - n²)
                torch.mul(dn_pre, r, out=dgh[:, two_h:])
                torch.mul(dn_pre, ghn_all[t], out=drz[:, :h_dim])  # dL/dr
                torch.mul(dh, torch.sub(h_prev, n, out=tmp), out=drz[:, h_dim:])  # dL/dz
                torch.mul(drz, torch.addcmul(rz, rz, rz, value=-1.0, out=sig), out=dgh[:, :two_h])  # ⊙ σ'
                dh.mul_(z)
                if t > 0:
                    dh.add_(dhs[t - 1])
                dh.addmm_(dgh, w_hh)
            # The chunk's share of the parameter and input gradients, while its gate gradients
            # are in cache. dL/dg_i = [dgh[r,z], dn_pre]: two column blocks, not concatenated.
            _chunk_gradients(start, stop, x, h0, hs, w_ih, dgh_buf, dn_buf, dx, dw_ih, dw_hh, db_ih, db_hh)
        return dx, dh, dw_ih, dw_hh, db_ih, db_hh


def _chunk_gradients(start, stop, x, h0, hs, w_ih, dgh_buf, dn_buf, dx, dw_ih, dw_hh, db_ih, db_hh):
    """Write time steps [start, stop)'s rows of dx and add their contributions to dW_ih, dW_hh,
    db_ih and db_hh."""
    batch, h_dim = hs.shape[1], hs.shape[2]
    two_h = 2 * h_dim
    rows = (stop - start) * batch
    dgh = dgh_buf[: stop - start].view(rows, 3 * h_dim)
    dgi_rz, dgi_n = dgh[:, :two_h], dn_buf[: stop - start].view(rows, h_dim)
    flat_x = x[start:stop].reshape(rows, -1)
    if dx is not None:
        torch.addmm(dgi_n @ w_ih[two_h:], dgi_rz, w_ih[:two_h], out=dx[start:stop].view(rows, -1))
    dw_ih[:two_h].addmm_(dgi_rz.t(), flat_x)
    dw_ih[two_h:].addmm_(dgi_n.t(), flat_x)
    db_ih[:two_h].add_(dgi_rz.sum(0))
    db_ih[two_h:].add_(dgi_n.sum(0))
    db_hh.add_(dgh.sum(0))
    # h_{t-1} of the chunk's steps: h0 for step 0, the stored states otherwise.
    if start == 0:
        dw_hh.addmm_(dgh_buf[0].t(), h0)
        dw_hh.addmm_(dgh[batch:].t(), hs[: stop - 1].reshape(-1, h_dim))
    else:
        dw_hh.addmm_(dgh.t(), hs[start - 1: stop - 1].reshape(rows, h_dim))


def gru_sequence(x: torch.Tensor, h0: torch.Tensor, gru: nn.GRU) -> torch.Tensor:
    """Hidden states [T, B, H] of one-layer ``gru`` over time-major inputs ``x`` [T, B, I] from
    ``h0`` [B, H], with ``gru``'s own parameters.

    On CPU: :class:`GRUSequence` when a gradient is wanted, the same loop without saving otherwise.
    On other devices the module's own kernel (cuDNN's fused GRU on CUDA) is faster than any Python
    loop, so it runs there."""
    if x.device.type != "cpu":
        out, _ = gru(x.transpose(0, 1) if gru.batch_first else x, h0.unsqueeze(0))
        return out.transpose(0, 1) if gru.batch_first else out
    params = (gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
    if torch.is_grad_enabled() and any(p.requires_grad for p in (x, h0, *params)):
        return GRUSequence.apply(x, h0, *params)
    return _forward(x, h0, *params, keep=False)[0]
