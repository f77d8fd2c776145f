"""The MLP: the blog's shape, logits out, dropout only in training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_ddp.data.readers import PIXEL_MEAN, PIXEL_STD
from mnist_ddp.data.splits import normalize_pixels
from mnist_ddp.model.mlp import MLP, BitsDropout, parameter_count
from mnist_ddp.model.sample_noise import DROPOUT_STREAM, sample_keys


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
    assert isinstance(layers[-2], BitsDropout) and layers[-2].p == 0.5 and isinstance(layers[-3], nn.ReLU)


def test_returns_logits_of_shape_batch_by_10():
    model = MLP(64, [32, 16], dropout=0.0)
    pixels = torch.randint(0, 256, (5, 64), dtype=torch.uint8)
    logits = model(normalize_pixels(pixels))
    assert logits.shape == (5, 10) and logits.dtype == torch.float32
    # Logits, not log-probabilities: they do not already sum to one under exp.
    assert not torch.allclose(logits.exp().sum(dim=1), torch.ones(5), atol=1e-3)


def test_normalize_pixels_matches_the_formula_and_leaves_its_input_alone():
    pixels = torch.tensor([[0.0, 255.0, 51.0]])
    x = normalize_pixels(pixels)
    assert torch.allclose(x, (pixels / 255 - PIXEL_MEAN) / PIXEL_STD)
    assert pixels.tolist() == [[0.0, 255.0, 51.0]]  # a copy, not in place
    assert torch.equal(normalize_pixels(pixels.to(torch.uint8)), x)


@pytest.mark.parametrize("p", [0.5, 0.1, 0.9])
@pytest.mark.parametrize("keyed", [False, True])
def test_bits_dropout_drops_a_fraction_p_and_keeps_the_mean(p, keyed):
    torch.manual_seed(0)
    drop = BitsDropout(p, 1000).train()
    keys = sample_keys(0, torch.tensor(7), torch.arange(400), DROPOUT_STREAM) if keyed else None
    out = drop(torch.ones(400, 1000), keys)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - p) < 0.005
    assert abs(out.mean().item() - 1) < 0.02  # survivors are scaled by 1 / (1 - p)
    assert torch.equal(BitsDropout(0.0, 1000).train()(out), out)


@pytest.mark.parametrize("p, bf16_mask", [(0.5, True), (0.3, False)])
def test_bits_dropout_in_bf16_rounds_once_as_float32_then_a_cast_does(p, bf16_mask):
    # Under autocast the activations are bf16. A scale exact in bf16 (p=0.5: 2) keeps the mask,
    # and the output, in bf16 (no cast either way); any other scale keeps a float32 mask. Both
    # give what the float32 product cast to bf16 gives, bit for bit.
    drop = BitsDropout(p, 256).train()
    keys = sample_keys(0, torch.tensor(7), torch.arange(64), DROPOUT_STREAM)
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    out = drop(x, keys)
    assert out.dtype == (torch.bfloat16 if bf16_mask else torch.float32)
    assert torch.equal(out.to(torch.bfloat16), drop(x.float(), keys).to(torch.bfloat16))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = MLP(784, [256, 128], dropout=0.5)
    x = torch.randn(8, 784)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
