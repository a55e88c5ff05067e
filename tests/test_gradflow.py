"""gradflow.csv: gradient and weight norms per layer, kept in step with the checkpoint."""

import pytest
import torch.nn as nn

from archbench.errors import ArchbenchError
from archbench.train import gradflow


def model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))


def test_columns_hold_gradient_then_weight_norms_and_read_gives_the_ratio(tmp_path):
    cols = gradflow.columns(model())
    assert cols == ["grad:0.weight", "grad:2.weight", "weight:0.weight", "weight:2.weight"]
    gradflow.sync(tmp_path, cols, [[1, 0.5, 2.0, 1.0, 4.0, 0.5]])
    flow = gradflow.read(tmp_path)
    assert flow.layers == ["0.weight", "2.weight"] and flow.t.tolist() == [0.5]
    assert flow.relative().tolist() == [[0.5, 2.0]]


def test_rows_of_the_older_gradient_only_layout_are_dropped_and_the_file_follows(tmp_path):
    m = model()
    old, new = [1, 0.5, 2.0, 1.0], [2, 1.5, 2.0, 1.0, 4.0, 0.5]
    assert gradflow.current_rows([old, new], m) == [new]
    (tmp_path / gradflow.FILE_NAME).write_text("epoch,t,0.weight,2.weight\n1,0.5,2.0,1.0\n")
    gradflow.sync(tmp_path, gradflow.columns(m), gradflow.current_rows([old], m))
    assert not (tmp_path / gradflow.FILE_NAME).exists()  # nothing current to show: no stale file either


def test_a_file_whose_rows_do_not_fit_its_header_is_a_clear_error(tmp_path):
    (tmp_path / gradflow.FILE_NAME).write_text("epoch,t,grad:a,weight:a\n1,0.5,2.0\n")
    with pytest.raises(ArchbenchError, match="rows do not match its 4 columns; delete it and resume"):
        gradflow.read(tmp_path)
