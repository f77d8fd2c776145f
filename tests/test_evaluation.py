"""Test-set counting: exact counts, any batch size, summable across subsets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mnist_ddp.data.splits import normalize_pixels
from mnist_ddp.model.evaluation import EvalCounts, confusion_text, count_tensor, counts_from_tensor, evaluate
from mnist_ddp.model.mlp import MLP


@pytest.fixture
def scored():
    torch.manual_seed(1)
    model = MLP(64, [32], dropout=0.5)
    images = torch.randint(0, 256, (101, 64), dtype=torch.uint8)
    labels = torch.randint(0, 10, (101,))
    return model, images, labels


def test_counts_match_a_direct_computation(scored):
    model, images, labels = scored
    model.train()  # evaluate must switch dropout off and then restore training mode
    counts = evaluate(model, images, labels, batch_size=17)
    assert model.training
    model.eval()
    with torch.no_grad():
        logits = model(normalize_pixels(images))
    hit = logits.argmax(1) == labels
    assert counts.examples == 101
    assert counts.correct == int(hit.sum())
    assert counts.accuracy == pytest.approx(int(hit.sum()) / 101)
    assert counts.loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert counts.per_class_total == torch.bincount(labels, minlength=10).tolist()
    assert sum(counts.per_class_correct) == counts.correct
    predicted = logits.argmax(1)
    for t, p in [(0, 0), (3, 5), (9, 1)]:
        assert counts.confusion[t][p] == int(((labels == t) & (predicted == p)).sum())
    for c in range(10):
        mask = labels == c
        if mask.any():
            assert counts.per_class_accuracy[c] == pytest.approx(hit[mask].float().mean().item())


def test_batch_size_does_not_change_the_counts(scored):
    model, images, labels = scored
    a, b = evaluate(model, images, labels, 1000), evaluate(model, images, labels, 7)
    assert (a.correct, a.examples, a.confusion) == (b.correct, b.examples, b.confusion)
    assert a.loss_sum == pytest.approx(b.loss_sum)


def test_counts_of_disjoint_parts_sum_to_the_whole(scored):
    # This is what lets ranks score disjoint shares and all_reduce the counts.
    model, images, labels = scored
    whole = count_tensor(model, images, labels, 50)
    parts = count_tensor(model, images[:40], labels[:40], 50) + count_tensor(model, images[40:], labels[40:], 50)
    assert counts_from_tensor(parts).correct == counts_from_tensor(whole).correct
    assert torch.allclose(parts, whole)


def test_confusion_text_has_a_row_per_true_digit():
    counts = EvalCounts(0.0, [[5 if t == p else 0 for p in range(10)] for t in range(10)])
    lines = confusion_text(counts).splitlines()
    assert len(lines) == 11 and lines[0].startswith("true\\pred")
    assert lines[4].split() == ["3", "0", "0", "0", "5", "0", "0", "0", "0", "0", "0"]
