"""Curvature from Hessian-vector products, checked against Hessians known exactly: a quadratic whose
eigenvalues are chosen, and tiny networks small enough for ``torch.autograd.functional.hessian``."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.integrate import trapezoid
from torch.func import functional_call

from archbench.analysis.curvature import (
    Hessian,
    Term,
    eigenvalue_density,
    hutchinson_trace,
    top_eigenvalues,
)
from archbench.errors import ArchbenchError

# Torch scripts its forward-mode decompositions on the first jvp of a process and warns that scripting is
# deprecated; that is torch talking to itself, not something these tests or the module can act on.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

F64 = torch.float64
# Chosen spectrum: distinct, evenly spaced, a few negative, so the top 4 are well separated.
LAMBDAS = np.linspace(-3.0, 10.0, 30)


def quadratic(lambdas: np.ndarray, seed: int = 0) -> tuple[Hessian, np.ndarray]:
    """f(θ) = ½ θᵀAθ + bᵀθ with A = Q diag(λ) Qᵀ, θ split over two parameters of different shapes whose
    names are not in alphabetical order, so that the dict's order is what flattening must follow."""
    rng = np.random.default_rng(seed)
    n = len(lambdas)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a_np = (q * lambdas) @ q.T
    a_np = (a_np + a_np.T) / 2
    a, b = torch.from_numpy(a_np), torch.from_numpy(rng.standard_normal(n))
    params = {"w": torch.randn(4, 5, dtype=F64), "a": torch.randn(n - 20, dtype=F64)}

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        theta = torch.cat([p["w"].reshape(-1), p["a"]])
        return 0.5 * theta @ a @ theta + b @ theta

    return Hessian(params, [(1.0, f)]), a_np


@pytest.fixture(scope="module")
def quad() -> tuple[Hessian, np.ndarray]:
    return quadratic(LAMBDAS)


def mlp(dtype: torch.dtype = F64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)  # 67 parameters


def cnn() -> nn.Module:
    """Conv, batch norm in eval mode with running statistics far from 0 and 1, pooling and a head: 75 parameters."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3)
    ).to(F64)
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


def batches(model: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = (12, 4) if isinstance(model[0], nn.Linear) else (12, 2, 6, 6)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randint(0, 3, (12,), generator=g)


def terms_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cuts: list[int]) -> list[Term]:
    """Mean cross-entropy of each slice of the images, weighted by its share of them."""

    def term(xs: torch.Tensor, ys: torch.Tensor) -> Term:
        return len(ys) / len(y), lambda p: F.cross_entropy(functional_call(model, p, (xs,)), ys)

    edges = [0, *cuts, len(y)]
    return [term(x[i:j], y[i:j]) for i, j in zip(edges, edges[1:])]


def network(model: nn.Module, dtype: torch.dtype = F64) -> tuple[Hessian, np.ndarray]:
    """The network's Hessian over two batches (7 and 5 images), and the exact one formed in float64."""
    x, y = batches(model, dtype)
    params = {name: p.detach() for name, p in model.named_parameters()}
    h = Hessian(params, terms_of(model, x, y, [7]))
    exact_model = copy.deepcopy(model).to(F64)
    exact = Hessian({k: v.to(F64) for k, v in params.items()}, terms_of(exact_model, x.to(F64), y, [7]))

    def loss(flat: torch.Tensor) -> torch.Tensor:
        p = exact.unflatten(flat)
        return sum(w * f(p) for w, f in exact.terms)

    full = torch.autograd.functional.hessian(loss, exact.flatten(exact.params))
    return h, full.numpy()


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def net(request) -> tuple[Hessian, np.ndarray]:
    return network(mlp() if request.param == "mlp" else cnn())


def test_quadratic_matvec_is_a_times_v(quad):
    h, a = quad
    assert h.n == 30 and h.dtype == F64
    v = torch.randn(h.n, dtype=F64)
    before = h.matvecs
    np.testing.assert_allclose(h.matvec(v).numpy(), a @ v.numpy(), rtol=0, atol=1e-12)
    assert h.matvecs == before + 1


def test_flatten_follows_the_dicts_order_and_unflatten_inverts_it(quad):
    h, _ = quad
    flat = h.flatten(h.params)
    np.testing.assert_array_equal(flat[:20].numpy(), h.params["w"].reshape(-1).numpy())
    np.testing.assert_array_equal(flat[20:].numpy(), h.params["a"].numpy())
    back = h.unflatten(torch.arange(h.n, dtype=F64))
    assert list(back) == ["w", "a"] and back["w"].shape == (4, 5) and back["a"].shape == (10,)
    assert back["w"][1, 0] == 5 and back["a"][0] == 20
    assert torch.equal(h.flatten(back), torch.arange(h.n, dtype=F64))


def test_quadratic_top_eigenvalues_are_the_chosen_ones(quad):
    h, _ = quad
    top = top_eigenvalues(h, k=4, seed=0, tol=1e-10)
    assert top.dtype == np.float64 and top.shape == (4,)
    np.testing.assert_allclose(top, LAMBDAS[::-1][:4], rtol=0, atol=1e-8)


def test_quadratic_hutchinson_trace_is_within_its_error(quad):
    h, a = quad
    before = h.matvecs
    tr = hutchinson_trace(h, samples=200, seed=0)
    assert h.matvecs == before + 200 and tr.samples == 200
    assert tr.se > 0
    assert abs(tr.mean - np.trace(a)) < 4 * tr.se


def test_network_top_eigenvalue_matches_the_full_hessian(net):
    h, full = net
    exact = np.linalg.eigvalsh(full)
    top = top_eigenvalues(h, k=2, seed=0)
    # Relative error of 1e-4 at the default tol (1e-3): tol bounds ARPACK's residuals, and the error of a symmetric
    # eigenvalue is of the order of its residual squared.
    np.testing.assert_allclose(top, exact[::-1][:2], rtol=1e-4, atol=0)


def test_network_hutchinson_trace_is_within_its_error(net):
    h, full = net
    tr = hutchinson_trace(h, samples=100, seed=0)
    assert tr.se > 0
    assert abs(tr.mean - np.trace(full)) < 4 * tr.se


def test_network_matvec_is_the_full_hessian_times_v(net):
    h, full = net
    v = torch.randn(h.n, dtype=F64)
    np.testing.assert_allclose(h.matvec(v).numpy(), full @ v.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [mlp, cnn])
def test_terms_of_two_batches_sum_to_the_whole_batch(make):
    model = make()
    x, y = batches(model, F64)
    params = {name: p.detach() for name, p in model.named_parameters()}
    split = Hessian(params, terms_of(model, x, y, [7]))
    whole = Hessian(params, terms_of(model, x, y, []))
    v = torch.randn(split.n, dtype=F64)
    np.testing.assert_allclose(split.matvec(v).numpy(), whole.matvec(v).numpy(), rtol=1e-10, atol=1e-13)


def test_float32_parameters_give_float32_products_and_close_eigenvalues():
    h, full = network(mlp(torch.float32), torch.float32)
    assert h.dtype == torch.float32
    assert h.matvec(torch.randn(h.n)).dtype == torch.float32
    exact = np.linalg.eigvalsh(full)
    np.testing.assert_allclose(top_eigenvalues(h, k=1, seed=0), exact[-1:], rtol=1e-3)
    density = eigenvalue_density(h, steps=10, probes=2, seed=0)
    np.testing.assert_allclose(density.weights.sum(axis=1), 1.0, atol=1e-6)
    assert exact[0] - 1e-3 <= density.nodes.min() and density.nodes.max() <= exact[-1] + 1e-3


def test_the_same_seed_gives_the_same_results_and_another_seed_other_probes(quad):
    h, _ = quad
    np.testing.assert_array_equal(top_eigenvalues(h, 3, seed=5), top_eigenvalues(h, 3, seed=5))
    assert hutchinson_trace(h, 10, seed=5) == hutchinson_trace(h, 10, seed=5)
    assert hutchinson_trace(h, 10, seed=5).mean != hutchinson_trace(h, 10, seed=6).mean
    one, again, other = (eigenvalue_density(h, steps=5, probes=3, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(one.nodes, again.nodes)
    np.testing.assert_array_equal(one.weights, again.weights)
    assert not np.array_equal(one.weights, other.weights)


def test_slq_with_n_steps_recovers_the_whole_spectrum(quad):
    h, _ = quad
    before = h.matvecs
    density = eigenvalue_density(h, steps=30, probes=8, seed=0)
    assert density.nodes.shape == density.weights.shape == (8, 30)
    assert h.matvecs == before + 8 * 30
    np.testing.assert_allclose(density.nodes.min(axis=1), LAMBDAS[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(density.nodes.max(axis=1), LAMBDAS[-1], rtol=0, atol=1e-6)
    # A full Krylov space: every Ritz value is an eigenvalue, each appearing once.
    np.testing.assert_allclose(np.sort(density.nodes, axis=1), np.tile(LAMBDAS, (8, 1)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(density.weights.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert (density.weights >= 0).all()

    grid = np.linspace(LAMBDAS[0] - 2, LAMBDAS[-1] + 2, 4001)
    smooth = density.smoothed(grid, sigma=0.1)
    assert smooth.shape == grid.shape and (smooth >= 0).all()
    assert trapezoid(smooth, grid) == pytest.approx(1.0, abs=1e-6)
    # Broadened narrowly, the density peaks at eigenvalues and is empty between them (spacing ≈ 0.45).
    at = density.smoothed(LAMBDAS, sigma=0.02)
    between = density.smoothed((LAMBDAS[1:] + LAMBDAS[:-1]) / 2, sigma=0.02)
    assert at.min() > 100 * between.max()


def test_slq_quadrature_mean_is_the_normalised_trace(quad):
    h, a = quad
    density = eigenvalue_density(h, steps=3, probes=300, seed=0)
    # Σ_j weight_j · node_j = vᵀAv for the unit start vector v, whose mean over random directions is tr(A)/n.
    per_probe = (density.weights * density.nodes).sum(axis=1)
    se = per_probe.std(ddof=1) / np.sqrt(len(per_probe))
    assert abs(per_probe.mean() - np.trace(a) / h.n) < 4 * se


def test_slq_stops_when_the_krylov_space_is_invariant():
    # Three distinct eigenvalues: any start vector's Krylov space has dimension 3, and a fourth step breaks down.
    values = np.repeat([-1.0, 2.0, 5.0], 10)
    h, _ = quadratic(values, seed=3)
    density = eigenvalue_density(h, steps=8, probes=4, seed=0)
    assert h.matvecs == 4 * 3
    np.testing.assert_allclose(density.nodes[:, :3], np.tile([-1.0, 2.0, 5.0], (4, 1)), rtol=0, atol=1e-8)
    assert (density.weights[:, 3:] == 0).all() and (density.nodes[:, 3:] == density.nodes[:, 2:3]).all()
    np.testing.assert_allclose(density.weights.sum(axis=1), 1.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda h: top_eigenvalues(h, k=0, seed=0), "k=0"),
        (lambda h: top_eigenvalues(h, k=30, seed=0), "k=30"),
        (lambda h: top_eigenvalues(h, k=2, seed=0, tol=-1.0), "tol=-1.0"),
        (lambda h: hutchinson_trace(h, samples=1, seed=0), "samples=1"),
        (lambda h: eigenvalue_density(h, steps=1, probes=2, seed=0), "steps=1"),
        (lambda h: eigenvalue_density(h, steps=31, probes=2, seed=0), "steps=31"),
        (lambda h: eigenvalue_density(h, steps=5, probes=0, seed=0), "probes=0"),
        (lambda h: eigenvalue_density(h, steps=5, probes=1, seed=0).smoothed(np.zeros(3), 0.0), "sigma=0.0"),
    ],
)
def test_bad_arguments_are_refused_with_a_fix(quad, call, message):
    h, _ = quad
    before = h.matvecs
    with pytest.raises(ArchbenchError, match=message) as caught:
        call(h)
    assert "\n" not in str(caught.value) and "pass" in str(caught.value)
    if message != "sigma=0.0":
        assert h.matvecs == before  # refused before any work


def test_a_hessian_needs_terms_and_one_dtype():
    f = lambda p: (p["a"] ** 2).sum()  # noqa: E731
    with pytest.raises(ArchbenchError, match="no loss terms"):
        Hessian({"a": torch.zeros(3)}, [])
    with pytest.raises(ArchbenchError, match="no parameters"):
        Hessian({}, [(1.0, f)])
    with pytest.raises(ArchbenchError, match="'b' is torch.float64"):
        Hessian({"a": torch.zeros(3), "b": torch.zeros(2, dtype=F64)}, [(1.0, f)])
    with pytest.raises(ArchbenchError, match="'i' is torch.int64"):
        Hessian({"i": torch.zeros(3, dtype=torch.int64)}, [(1.0, f)])
