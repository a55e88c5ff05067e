"""Times the landscape's two costly parts on this machine: a 2-D grid and the top Hessian eigenvalues.

    PYTHONPATH=src python3 benchmarks/landscape.py                       # device defaults
    PYTHONPATH=src python3 benchmarks/landscape.py --model vgg19_bn --resolution 21 --images 2500

The weights are a freshly initialised model and the images random (CIFAR-10's shape): the
cost of a forward pass or a Hessian-vector product does not depend on either. Prints
seconds per part, grid points per second, images per second and HVPs per second.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from archbench.analysis import curvature
from archbench.analysis import landscape as ls
from archbench.analysis.directions import directions, move_to, weights_of
from archbench.analysis.probe import Probe
from archbench.config import Config
from archbench.models import count_parameters
from archbench.train.training import build_model, resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--device", default="auto")
    p.add_argument("--resolution", type=int)
    p.add_argument("--images", type=int)
    p.add_argument("--eigenvalues", type=int)
    args = p.parse_args()
    device = resolve_device(args.device)
    s = ls.resolve(ls.Settings(resolution=args.resolution, images=args.images, eigenvalues=args.eigenvalues), device)
    model = build_model(Config(model=args.model, device=device.type), device).eval()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (s.images, 32, 32, 3), dtype=np.uint8)
    y = np.arange(s.images) % 10
    probe = Probe(model, x, y, s.images, device, ls.EVAL_BATCH)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(f"{args.model} ({count_parameters(model):,} parameters) on {name}, torch {torch.__version__}")

    probe.measure()  # warm-up: cuDNN picks its kernels
    origin = weights_of(model)
    d1, d2 = directions(origin, 2, s.seed)
    t = ls.axis(s)
    _sync(device)
    started = time.perf_counter()
    for a in t:
        for b in t:
            move_to(model, origin, [(a, d1), (b, d2)])
            probe.measure()
    grid_s = time.perf_counter() - started
    points = len(t) ** 2
    print(
        f"2-D grid {len(t)}x{len(t)} on {s.images} images: {grid_s:.1f} s "
        f"({points / grid_s:.1f} points/s, {points * s.images / grid_s:,.0f} images/s)"
    )

    move_to(model, origin, [])
    params = {k: v.detach() for k, v in model.named_parameters()}
    h = curvature.Hessian(params, probe.terms())
    h.matvec(torch.zeros(h.n, device=device, dtype=h.dtype))  # warm-up
    h.matvecs = 0
    _sync(device)
    started = time.perf_counter()
    top = curvature.top_eigenvalues(h, s.eigenvalues, s.seed)
    eig_s = time.perf_counter() - started
    print(
        f"top-{s.eigenvalues} Hessian eigenvalues on {s.images} images: {eig_s:.1f} s, {h.matvecs} HVPs "
        f"({h.matvecs / eig_s:.2f} HVPs/s); λ = {', '.join(f'{v:.4g}' for v in top)}"
    )


if __name__ == "__main__":
    main()
