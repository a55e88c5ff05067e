"""The evaluation pass: one host sync per pass whatever the number of batches (with an
exactness mask too), and per-image outputs that agree with its totals."""

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from archbench.train.engine import evaluate


class OpLog(TorchDispatchMode):
    """Records the name of every aten op run under it."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def batches(n_batches: int, size: int = 8):
    g = torch.Generator().manual_seed(n_batches)
    return [
        (torch.randn(size, 3, 4, 4, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n_batches)
    ]


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 10))


def host_reads(n_batches: int) -> list[str]:
    """The ops of one evaluation that read a value back to the host, or would need to."""
    data = batches(n_batches)
    exact = torch.arange(8 * n_batches) % 3 != 0
    m = model()
    with OpLog() as log:
        evaluate(m, data, torch.device("cpu"), exact, keep_outputs=True)
    return [
        op
        for op in log.ops
        if "_local_scalar_dense" in op or "nonzero" in op or "index.Tensor" in op or "masked_select" in op
    ]


def test_evaluation_with_an_exactness_mask_reads_the_host_a_fixed_number_of_times():
    few, many = host_reads(2), host_reads(7)
    assert few == many  # nothing per batch: neither .item() nor a boolean-mask index
    assert not any("nonzero" in op or "index.Tensor" in op or "masked_select" in op for op in many)


def test_the_op_log_sees_a_boolean_mask_index():
    # The check above could not fail if boolean indexing were invisible to it.
    x, m = torch.randn(6), torch.tensor([True, False] * 3)
    with OpLog() as log:
        x[m].sum()
    assert any("index.Tensor" in op for op in log.ops)


def test_outputs_agree_with_the_totals_and_the_exact_subset():
    data = batches(3)
    exact = torch.arange(24) % 4 != 0
    out = evaluate(model(), data, torch.device("cpu"), exact, keep_outputs=True)
    o = out["outputs"]
    y = torch.cat([b[1] for b in data])
    assert o["logits"].dtype == torch.float16 and o["logits"].shape == (24, 10)
    assert out["acc"] == 100.0 * (o["pred"] == y).float().mean().item()
    assert abs(out["loss"] - o["loss"].mean().item()) < 1e-6
    assert out["images_exact"] == 18
    assert out["acc_exact"] == 100.0 * (o["pred"] == y)[exact].float().mean().item()
    assert abs(out["loss_exact"] - o["loss"][exact].mean().item()) < 1e-6


def test_a_nan_loss_on_an_inexact_image_stays_out_of_the_exact_figures():
    class NaNFirst(nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 10)
            out[0] = float("nan")
            return out

    x, y = torch.zeros(4, 3, 4, 4), torch.zeros(4, dtype=torch.long)
    out = evaluate(NaNFirst(), [(x, y)], torch.device("cpu"), torch.tensor([False, True, True, True]))
    assert out["loss"] != out["loss"]  # nan overall
    assert abs(out["loss_exact"] - torch.log(torch.tensor(10.0)).item()) < 1e-6
