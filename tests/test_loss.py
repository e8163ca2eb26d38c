"""Label-smoothed binary cross-entropy against a hand computation (docs/RECIPE.md)."""
import math

import pytest
import torch

from resnet.algorithms import label_smoothed_bce, smoothed_targets


def test_smoothed_targets_and_loss_against_hand_computation():
    t = smoothed_targets(torch.tensor([1]), 4, 0.08)
    assert torch.allclose(t, torch.tensor([[0.02, 0.94, 0.02, 0.02]]))
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0])
    a, c = 0.08, 3
    total = 0.0
    for row, label in zip(logits.tolist(), labels.tolist()):
        for j, z in enumerate(row):
            y = (1 - a) * (j == label) + a / c
            p = 1 / (1 + math.exp(-z))
            total += -(y * math.log(p) + (1 - y) * math.log(1 - p))
    assert label_smoothed_bce(logits, labels, a).item() == pytest.approx(total / 2, rel=1e-6)
