"""The unitary peers' recurrence `h_t = modReLU(W h_{t-1} + u_t; b)` over a whole sequence, with a
hand-written backward: the speed of the peers on the CPU (BENCHMARKS.md, "The unitary peers' recurrence").

Autograd through the per-step loop (`recurrence_ref`, the specification) records modReLU's half-dozen small
operations a step and runs each one's backward node. Here the backward pass is a loop of W's adjoint and
modReLU's derivative only, with what modReLU's derivative needs computed for all steps at once; W's parameters get
their gradient from one autograd pass through W applied to all B·T previous states at once: W is linear,
so Σ_t ⟨∂L/∂z_t, ∂(W h_{t-1})/∂θ⟩ is the vector-Jacobian product of `W(θ) H_prev` with ∂L/∂Z."""
from __future__ import annotations

from typing import Callable

import torch

from ..ops import apply_nonlinearity
from ..ops.recurrence import MODRELU_EPS

Transition = Callable[[torch.Tensor], torch.Tensor]  # h (B, N) -> W h (B, N), built once per sequence


def recurrence_ref(step, u: torch.Tensor, h0: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The specification: autograd through the loop. step: h (B, N) -> W h; u: (B, T, N); h0: (B, N) -> H (B, T, N)."""
    h, states = h0, []
    for u_t in u.unbind(1):  # not u[:, t]: each such slice's backward fills a zero tensor of u's size
        h = apply_nonlinearity(step(h) + u_t, "modrelu", bias)
        states.append(h)
    return torch.stack(states, dim=1) if states else u


def recurrence(step: Transition, u: torch.Tensor, h0: torch.Tensor, bias: torch.Tensor, params) -> torch.Tensor:
    """`recurrence_ref(step, u, h0, bias)` with the hand-written backward. step: W·, built with its graph to W's
    `params`; the loops step with W built densely from it (`dense_steps`)."""
    if u.shape[1] == 0:
        return u
    with torch.no_grad():
        steps = dense_steps(step, u.shape[-1], u.dtype, u.device)
    return _Recurrence.apply(step, steps, u, h0.expand(u.shape[0], -1), bias, *params)


def dense_steps(step, n: int, dtype, device) -> tuple[Transition, Transition]:
    """(W·, W^H·) with W built densely from `step` once per sequence: one small matrix product a step, which
    beats a factored W's chain of small operations at small N (each model's measured rule), and for a dense
    W (expRNN, FC-uRNN) reuses its matrix rather than computing the matrix exponential again for W^H."""
    M = step(torch.eye(n, dtype=dtype, device=device))  # row i: (W e_i)^T, so h @ M = (W h)^T for rows h
    M_adjoint = M.conj().T
    return (lambda h: h @ M), (lambda g: g @ M_adjoint)


def _real(z: torch.Tensor) -> torch.Tensor:
    """A real view: (…, N) complex -> (…, N, 2); a real tensor as it is."""
    return torch.view_as_real(z) if z.is_complex() else z


class _Recurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, step, steps, u, h0, bias, *params):
        T = u.shape[1]
        U = u.transpose(0, 1).contiguous()  # (T, B, N): each step's slices contiguous
        Z, H = torch.empty_like(U), torch.empty_like(U)
        h = h0
        for t in range(T):
            z = torch.add(steps[0](h), U[t], out=Z[t])
            r = z.abs()
            scale = (r + bias).clamp_min_(0).div_(r.add_(MODRELU_EPS))  # z = 0 gives 0 · finite: no mask needed
            h = torch.mul(z, scale, out=H[t])
        ctx.step, ctx.steps, ctx.Z, ctx.H = step, steps, Z, H  # not save_for_backward: Z is no input or output
        ctx.save_for_backward(h0, bias, *params)
        return H.transpose(0, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gH):
        h0, bias, *params = ctx.saved_tensors
        Z, H, steps = ctx.Z, ctx.H, ctx.steps
        T, B, N = Z.shape
        with torch.no_grad():
            # modReLU z ↦ z·s(|z|), s(r) = relu(r + b)/(r + ε); its derivative applied to g is
            # s·g + Re(conj(z)·g)·(s'(r)/r)·z with s'(r) = (ε − b)/(r + ε)², zero where r + b ≤ 0 or r = 0
            r = Z.abs()
            live = (r + bias > 0) & (r > 0)
            d = r + MODRELU_EPS
            s = torch.where(live, (r + bias) / d, 0.0)
            k = torch.where(live, (MODRELU_EPS - bias) / (d * d * torch.where(live, r, 1.0)), 0.0)
            if Z.is_complex():
                s, k = s.unsqueeze(-1), k.unsqueeze(-1)  # on the real view's (…, 2)
            gH = gH.transpose(0, 1)  # (T, B, N), as H
            G = torch.empty_like(Z)  # ∂L/∂h_t, the total
            Gz = torch.empty_like(Z)  # ∂L/∂z_t
            Zr, Gr, Gzr = _real(Z), _real(G), _real(Gz)
            complex_ = Z.is_complex()
            carry = torch.zeros_like(Z[0])
            for t in range(T - 1, -1, -1):
                torch.add(gH[t], carry, out=G[t])
                gr = Gr[t]
                proj = (Zr[t] * gr).sum(-1, keepdim=True) if complex_ else Zr[t] * gr
                torch.addcmul(s[t] * gr, proj.mul_(k[t]), Zr[t], out=Gzr[t])
                carry = steps[1](Gz[t])
            grads = [None, None, Gz.transpose(0, 1) if ctx.needs_input_grad[2] else None,
                     carry if ctx.needs_input_grad[3] else None]
            if ctx.needs_input_grad[4]:  # ∂L/∂b = Re(conj(z)·g)/(r + ε) where live
                proj = (Zr * Gr).sum(-1) if complex_ else Zr * Gr
                grads.append(torch.where(live, proj / d, 0.0).sum((0, 1)))
            else:
                grads.append(None)
        wanted = ctx.needs_input_grad[5:]
        if any(wanted):  # W is linear: Σ_t ⟨∂L/∂z_t, ∂(W h_{t-1})/∂θ⟩, one vector-Jacobian product over all rows
            h_prev = torch.cat([h0.unsqueeze(0), H[:-1]]).reshape(T * B, N)
            with torch.enable_grad():
                Wh = ctx.step(h_prev)
            needed = [p for p, w in zip(params, wanted) if w]
            found = iter(torch.autograd.grad(Wh, needed, Gz.reshape(T * B, N), allow_unused=True,
                                             retain_graph=True))  # step's graph: a second backward works
            grads += [next(found) if w else None for w in wanted]
        else:
            grads += [None] * len(wanted)
        return tuple(grads)
