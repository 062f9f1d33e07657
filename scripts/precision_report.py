"""Float32 error of the mixture prior's density and the continuous Bernoulli's normaliser, against float64
references, for this library's code and for what it replaced. ``python scripts/precision_report.py``."""

import math

import pyro.distributions as dist
import torch

from pyro_vae.parts.likelihoods import StableContinuousBernoulli
from pyro_vae.parts.priors import DiagonalGaussianMixture


def expanded_float32(logits, locs, scales, z):
    """The replaced float32 GEMM expansion: [z², z] · [1/σ², −2μ/σ²] + Σ μ²/σ²."""
    prec = scales.pow(-2)
    quad = torch.cat([z * z, z], -1) @ torch.cat([prec, -2 * locs * prec], -1).T
    const = (locs.pow(2) * prec).sum(-1) + 2 * scales.log().sum(-1)
    log_comp = -0.5 * (quad + const + z.shape[-1] * math.log(2 * math.pi))
    return torch.logsumexp(log_comp + torch.log_softmax(logits, -1), -1)


def integral(d, dtype) -> float:
    x = torch.linspace(0, 1, 2**21 + 1, dtype=torch.float64)
    return torch.trapezoid(d.log_prob(x.to(dtype)).double().exp(), x).item()


def main() -> None:
    g = torch.Generator().manual_seed(0)
    k, d = 10, 50
    print("mixture of 10 Gaussians in 50-D, 500 points near the components: max |error| in nats (float32)")
    print(f"{'scale':>8} {'max |log p|':>12} {'expanded (old)':>15} {'pyro_vae':>10}")
    for scale in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0):
        locs = (2 * torch.randn(k, d, generator=g)).double()
        scales = (scale * torch.exp(0.1 * torch.randn(k, d, generator=g))).double()
        logits = torch.randn(k, generator=g).double()
        comp = torch.randint(k, (500,), generator=g)
        z = locs[comp] + scales[comp] * torch.randn(500, d, generator=g).double()
        f32 = [t.float() for t in (logits, locs, scales, z)]
        logits, locs, scales, z = (t.double() for t in f32)  # the reference sees the same float32 values
        ref = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(locs, scales).to_event(1)).log_prob(z)
        old = (expanded_float32(*f32).double() - ref).abs().max().item()
        new = (DiagonalGaussianMixture(*f32[:3]).log_prob(f32[3]).double() - ref).abs().max().item()
        print(f"{scale:8.0e} {ref.abs().max().item():12.1f} {old:15.3g} {new:10.3g}")
    print("\ncontinuous Bernoulli: ∫ p(x) dx − 1 over [0, 1] (trapezoid, 2^21 intervals)")
    print(f"{'logit':>7} {'torch f32':>10} {'torch f64':>10} {'ours f32':>10} {'ours f64':>10}")
    for eta in (0.0, 1e-4, 0.5, 5.0, 16.0, 20.0, 50.0, 100.0, 200.0, -200.0):
        row = []
        for cls in (dist.ContinuousBernoulli, StableContinuousBernoulli):
            for dtype in (torch.float32, torch.float64):
                row.append(integral(cls(logits=torch.tensor(eta, dtype=dtype)), dtype) - 1)
        print(f"{eta:7g} " + " ".join(f"{v:10.2e}" for v in row))


if __name__ == "__main__":
    from pyro_vae.errors import run_script

    raise SystemExit(run_script(main))
