"""Curvature of the loss at a point in weight space: the Hessian applied to vectors, its top eigenvalues,
its trace and its eigenvalue density.

The Hessian of a network is never formed: n parameters would make it n² numbers. Everything here needs only
Hessian-vector products, taken reverse-over-reverse (``torch.func.vjp`` of ``torch.func.grad``, as PyHessian's
double backward): on a CPU this measured twice as fast as forward-over-reverse (``jvp`` of ``grad``) for
resnet18. From those:

- the top eigenvalues by implicitly restarted Lanczos (ARPACK through ``scipy.sparse.linalg.eigsh``);
- the trace by Hutchinson's estimator, the mean of vᵀHv over Rademacher probes v;
- the eigenvalue density by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017, as in PyHessian): each
  probe's Lanczos tridiagonal gives Ritz values (nodes) and the squared first components of its eigenvectors
  (weights), a quadrature rule for the spectral measure seen from that probe.

The loss is a weighted sum of terms, one per batch of images, so that no more than one batch is in memory
while a product is taken. Every random draw comes from a seed, so results are reproducible.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from scipy.stats import norm
from torch.func import grad, vjp

from archbench.errors import ArchbenchError

Term = tuple[float, Callable[[dict[str, torch.Tensor]], torch.Tensor]]  # (weight, params -> scalar loss)


class Hessian:
    """The Hessian of L(θ) = Σ_i weight_i · f_i(θ) at ``params``, applied to vectors (never formed).

    Vectors are flat: the parameters concatenated in the dict's key order, in the parameters' dtype and device.
    Each f_i must be a fixed function of the parameters (batch norm in eval mode, no dropout): one that changes
    between calls is no matrix, and Lanczos would return nonsense.
    """

    def __init__(self, params: dict[str, torch.Tensor], terms: list[Term]):
        if not params:
            raise ArchbenchError("Hessian: no parameters given; pass a dict of name -> tensor")
        if not terms:
            raise ArchbenchError("Hessian: no loss terms given; pass at least one (weight, loss function) pair")
        first = next(iter(params.values()))
        for name, p in params.items():
            if not p.is_floating_point() or p.dtype != first.dtype or p.device != first.device:
                raise ArchbenchError(
                    f"Hessian: parameter {name!r} is {p.dtype} on {p.device}, the first is {first.dtype} on "
                    f"{first.device}; pass floating-point parameters of one dtype on one device"
                )
        # A snapshot: training the model afterwards must not move the point the Hessian is taken at.
        self.params = {name: p.detach().clone() for name, p in params.items()}
        self.terms = list(terms)
        self.dtype: torch.dtype = first.dtype
        self.device: torch.device = first.device
        self._shapes = [p.shape for p in self.params.values()]
        self._sizes = [p.numel() for p in self.params.values()]
        self.n: int = sum(self._sizes)
        self.matvecs: int = 0

    def flatten(self, tree: dict[str, torch.Tensor]) -> torch.Tensor:
        """One flat vector of ``tree``'s tensors, in the order of the parameters."""
        return torch.cat([tree[name].reshape(-1) for name in self.params])

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector cut back into tensors named and shaped like the parameters (views of ``v``)."""
        if v.shape != (self.n,):
            raise ValueError(f"expected a flat vector of {self.n} elements, got shape {tuple(v.shape)}")
        chunks = torch.split(v, self._sizes)
        return {name: c.view(shape) for name, c, shape in zip(self.params, chunks, self._shapes)}

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector ``v``."""
        tangent = self.unflatten(v.to(dtype=self.dtype, device=self.device))
        out = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        with warnings.catch_warnings(), full_float32(self.device):
            # Torch may script its autograd decompositions on a process's first product and warn that
            # scripting is deprecated: its own internals, nothing a caller can act on.
            warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
            for weight, f in self.terms:
                hv = vjp(grad(f), self.params)[1](tangent)[0]
                out.add_(self.flatten(hv).detach(), alpha=weight)
        self.matvecs += 1
        return out


@contextmanager
def full_float32(device: torch.device) -> Iterator[None]:
    """TF32 off while products are taken on CUDA: its 10-bit mantissa adds ~1e-3 relative noise to
    every product, as large as the solver's tolerance, and Lanczos needs a repeatable operator."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _as_operator(h: Hessian) -> LinearOperator:
    """``h`` as a float64 SciPy operator; products are taken in the parameters' dtype and device."""

    def matvec(x: np.ndarray) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
        return h.matvec(v).to(device="cpu", dtype=torch.float64).numpy()

    return LinearOperator((h.n, h.n), matvec=matvec, rmatvec=matvec, dtype=np.float64)


def _lanczos_vectors(k: int, n: int) -> int:
    """ARPACK's Krylov basis size. Its default (at least 20) spends 20 products before the first
    restart; the top of a network's spectrum is well separated, and with 2k + 2 (at least 8)
    vectors a top-1 estimate took 9 products instead of 21 for the same value (resnet18, CPU)."""
    return min(n, max(2 * k + 2, 8))


def top_eigenvalues(h: Hessian, k: int, seed: int, tol: float = 1e-3) -> np.ndarray:
    """The ``k`` largest (algebraic) eigenvalues of ``h``, descending, to relative tolerance ``tol``.

    The start vector is drawn from ``seed``, so the same call gives the same numbers.
    """
    if not 1 <= k < h.n:
        raise ArchbenchError(
            f"top_eigenvalues: k={k} is out of range for a Hessian of {h.n} parameters; pass 1 <= k <= {h.n - 1}"
        )
    if tol < 0:
        raise ArchbenchError(f"top_eigenvalues: tol={tol} is negative; pass a relative tolerance >= 0")
    v0 = np.random.default_rng(seed).standard_normal(h.n)
    try:
        values = eigsh(
            _as_operator(h), k=k, which="LA", v0=v0, tol=tol, ncv=_lanczos_vectors(k, h.n), return_eigenvectors=False
        )
    except ArpackNoConvergence as e:
        raise ArchbenchError(
            f"top_eigenvalues: ARPACK did not converge for k={k} at tol={tol}; loosen tol or ask for fewer eigenvalues"
        ) from e
    return np.sort(np.asarray(values, dtype=np.float64))[::-1].copy()


@dataclass(frozen=True)
class Trace:
    """Hutchinson's estimate of tr(H): the mean of vᵀHv and its standard error over ``samples`` probes."""

    mean: float
    se: float
    samples: int


def hutchinson_trace(h: Hessian, samples: int, seed: int) -> Trace:
    """tr(H) estimated from ``samples`` Rademacher probes, which give the least variance among i.i.d. probes."""
    if samples < 2:
        raise ArchbenchError(f"hutchinson_trace: samples={samples} gives no standard error; pass samples >= 2")
    # Drawn on the CPU so that a seed gives the same probes on every device.
    generator = torch.Generator().manual_seed(seed)
    quads = np.empty(samples, dtype=np.float64)
    for i in range(samples):
        v = torch.randint(0, 2, (h.n,), generator=generator).to(device=h.device, dtype=h.dtype).mul_(2).sub_(1)
        quads[i] = torch.dot(v, h.matvec(v)).item()
    return Trace(mean=float(quads.mean()), se=float(quads.std(ddof=1) / math.sqrt(samples)), samples=samples)


@dataclass(frozen=True)
class Density:
    """Stochastic Lanczos quadrature of the eigenvalue density, one row per probe.

    ``nodes`` are Ritz values, ascending within a row; ``weights`` are their quadrature weights, each row summing
    to 1. A probe that stopped early (its Krylov space was invariant) fills its row with weight 0, repeating its
    largest Ritz value, so that a row's smallest and largest nodes are still real Ritz values.
    """

    nodes: np.ndarray
    weights: np.ndarray

    def smoothed(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """The density on ``grid``: each node broadened into a Gaussian of width ``sigma``, averaged over probes.

        It integrates to 1 over a grid wide enough to hold every node give or take a few ``sigma``.
        """
        if not sigma > 0:
            raise ArchbenchError(f"Density.smoothed: sigma={sigma} is not positive; pass a width > 0")
        grid = np.asarray(grid, dtype=np.float64)
        bumps = norm.pdf(grid.reshape(-1, 1), loc=self.nodes.reshape(1, -1), scale=sigma)
        return (bumps @ self.weights.reshape(-1) / self.nodes.shape[0]).reshape(grid.shape)


def eigenvalue_density(h: Hessian, steps: int, probes: int, seed: int) -> Density:
    """Stochastic Lanczos quadrature with ``probes`` Gaussian start vectors of ``steps`` Lanczos steps each.

    Full reorthogonalisation keeps the Ritz values free of the spurious copies plain Lanczos makes in finite
    precision; it holds ``steps`` vectors of n numbers on the parameters' device while a probe runs.
    """
    if not 2 <= steps <= h.n:
        raise ArchbenchError(
            f"eigenvalue_density: steps={steps} is out of range for a Hessian of {h.n} parameters; "
            f"pass 2 <= steps <= {h.n}"
        )
    if probes < 1:
        raise ArchbenchError(f"eigenvalue_density: probes={probes} is too few; pass probes >= 1")
    generator = torch.Generator().manual_seed(seed)
    nodes = np.empty((probes, steps), dtype=np.float64)
    weights = np.zeros((probes, steps), dtype=np.float64)
    for p in range(probes):
        v = torch.randn(h.n, generator=generator, dtype=torch.float64).to(device=h.device, dtype=h.dtype)
        alpha, beta = _lanczos(h, v / v.norm(), steps)
        theta, vectors = eigh_tridiagonal(alpha, beta)
        m = len(theta)
        nodes[p, :m], nodes[p, m:] = theta, theta[-1]
        weights[p, :m] = vectors[0] ** 2
    return Density(nodes=nodes, weights=weights)


def _lanczos(h: Hessian, v: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal and off-diagonal of the Lanczos tridiagonal from unit ``v``: at most ``steps`` long, shorter
    when the Krylov space becomes invariant (an off-diagonal of rounding size)."""
    # Below this fraction of the largest entry so far, the next Lanczos vector would be rounding noise.
    breakdown = math.sqrt(torch.finfo(h.dtype).eps)
    basis = torch.empty((steps, h.n), dtype=h.dtype, device=h.device)
    alpha: list[float] = []
    beta: list[float] = []
    scale = 0.0
    for j in range(steps):
        basis[j] = v
        w = h.matvec(v)
        a = torch.dot(w, v).item()
        alpha.append(a)
        if j == steps - 1:
            break
        w.sub_(v, alpha=a)
        if j > 0:
            w.sub_(basis[j - 1], alpha=beta[-1])
        # Twice is enough (Giraud et al. 2005): one pass leaves what rounding put back in the span.
        for _ in range(2):
            w.sub_(basis[: j + 1].T @ (basis[: j + 1] @ w))
        b = w.norm().item()
        scale = max(scale, abs(a), b)
        if b <= breakdown * scale:
            break
        beta.append(b)
        v = w / b
    return np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64)
