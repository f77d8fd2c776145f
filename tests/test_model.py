"""The MLP: the blog's shape, logits out, dropout only in training."""

from __future__ import annotations

import torch
from torch import nn

from mnist_ddp.model import MLP, parameter_count


def test_blog_architecture_and_parameter_count():
    model = MLP(784, [256, 256, 256, 128, 128], dropout=0.5)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 256),
        (256, 256),
        (256, 256),
        (256, 128),
        (128, 128),
        (128, 10),
    ]
    expected = sum(i * o + o for i, o in [(784, 256), (256, 256), (256, 256), (256, 128), (128, 128), (128, 10)])
    assert parameter_count(model) == expected == 383_242
    # Dropout sits right before the last layer, after the last ReLU.
    layers = list(model.layers)
    assert isinstance(layers[-2], nn.Dropout) and layers[-2].p == 0.5 and isinstance(layers[-3], nn.ReLU)


def test_returns_logits_of_shape_batch_by_10_from_uint8():
    model = MLP(64, [32, 16], dropout=0.0)
    pixels = torch.randint(0, 256, (5, 64), dtype=torch.uint8)
    logits = model(pixels)
    assert logits.shape == (5, 10) and logits.dtype == torch.float32
    # Logits, not log-probabilities: they do not already sum to one under exp.
    assert not torch.allclose(logits.exp().sum(dim=1), torch.ones(5), atol=1e-3)
    # uint8 and the same values as float give the same output.
    assert torch.allclose(model(pixels.float()), logits)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = MLP(784, [256, 128], dropout=0.5)
    x = torch.randint(0, 256, (8, 784), dtype=torch.uint8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
