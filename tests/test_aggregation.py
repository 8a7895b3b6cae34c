"""Semantic aggregation of the RCA classifier (attention over memory centres) and its statistics."""

import math

import pytest
import torch
import torch.nn.functional as F

from rca.models.classifier import attention_statistics, build_classifier

K, D, CENTRES = 4, 16, 2


def model_with_centres(**kwargs):
    torch.manual_seed(0)
    model = build_classifier(K, backbone="resnet18", embed_dim=D, memory_size=8, num_centres=CENTRES, **kwargs)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(K).repeat_interleave(6)
    model.memory.push(torch.randn(len(labels), D, generator=generator), labels)
    model.update_centres()
    return model


def test_cosine_attention_is_the_paper_softmax_on_unit_vectors_with_a_temperature():
    model = model_with_centres(aggregation="cosine", aggregation_temperature=0.2)
    features = torch.randn(2, D, 3, 3, generator=torch.Generator().manual_seed(1))
    context, attention = model.aggregate(features)
    queries = F.normalize(features.flatten(2).transpose(1, 2), dim=2)
    expected = (queries @ model.centres.t() / 0.2).softmax(2)
    torch.testing.assert_close(attention, expected)
    torch.testing.assert_close(context.flatten(2).transpose(1, 2), expected @ model.centres)
    # unit-norm queries: the attention does not depend on the embedding's length
    torch.testing.assert_close(model.aggregate(features * 7.0)[1], attention)


def test_a_pixel_on_a_centre_attends_to_it_by_the_known_weight():
    # centres e_0 ... e_{M-1} (orthogonal): a query equal to e_0 gets e^(1/t) / (e^(1/t) + M - 1)
    model = model_with_centres(aggregation="cosine", aggregation_temperature=0.1)
    m = K * CENTRES
    model.centres.copy_(torch.eye(m, D))
    query = torch.zeros(1, D, 1, 1)
    query[0, 0] = 3.0
    attention = model.aggregate(query)[1][0, 0]
    weight = math.exp(10) / (math.exp(10) + m - 1)
    assert attention[0].item() == pytest.approx(weight, rel=1e-5)
    # the scaled dot product on the same unit vectors is almost uniform: the issue this fixes
    scaled = model_with_centres(aggregation="scaled")
    scaled.centres.copy_(torch.eye(m, D))
    flat = scaled.aggregate(query)[1][0, 0]
    assert flat[0].item() == pytest.approx(math.exp(3 / 4) / (math.exp(3 / 4) + m - 1), rel=1e-5)


def test_learnable_temperature_is_a_trained_head_parameter():
    model = model_with_centres(aggregation="learnable", aggregation_temperature=0.5)
    assert model.aggregation_temperature == pytest.approx(0.5)
    assert "log_temperature" in dict(model.named_parameters())
    backbone = {id(p) for p in model.backbone.parameters()}
    assert id(model.log_temperature) not in backbone  # trained with the heads' learning rate
    out = model(torch.randn(2, 3, 32, 32))
    out["scores"].sum().backward()
    assert model.log_temperature.grad is not None and model.log_temperature.grad != 0
    # a fixed temperature is a buffer: saved with the model, never trained
    fixed = model_with_centres(aggregation="cosine", aggregation_temperature=0.5)
    assert "log_temperature" not in dict(fixed.named_parameters())
    assert fixed.state_dict()["log_temperature"].item() == pytest.approx(math.log(0.5))
    with pytest.raises(ValueError, match="aggregation_temperature"):
        build_classifier(K, backbone="resnet18", aggregation_temperature=0.0)


def test_aggregation_none_is_the_ablation_without_context():
    model = model_with_centres(aggregation="none").eval()
    features = torch.randn(1, D, 2, 2)
    context, attention = model.aggregate(features)
    assert attention is None and torch.equal(context, torch.zeros_like(features))
    out = model(torch.randn(1, 3, 32, 32))
    assert out["attention"] is None and attention_statistics(out["attention"]) == {}


def test_attention_statistics_known_values():
    uniform = torch.full((2, 5, 8), 1 / 8)
    stats = attention_statistics(uniform)
    assert stats["attention_entropy"] == pytest.approx(math.log(8), rel=1e-6)
    assert stats["attention_entropy_ratio"] == pytest.approx(1.0, rel=1e-6)
    assert stats["attention_max_weight"] == pytest.approx(1 / 8, rel=1e-6)
    assert stats["attention_centres"] == 8
    one_hot = F.one_hot(torch.tensor([[0, 3], [7, 7]]), 8).float()
    stats = attention_statistics(one_hot)
    assert stats["attention_entropy"] == pytest.approx(0.0, abs=1e-6) and stats["attention_max_weight"] == 1.0
    # half the rows (1/2, 1/2, 0, ...) and half uniform: mean entropy (log 2 + log 8) / 2
    half = torch.zeros(1, 2, 8)
    half[0, 0, :2] = 0.5
    half[0, 1] = 1 / 8
    stats = attention_statistics(half)
    assert stats["attention_entropy"] == pytest.approx((math.log(2) + math.log(8)) / 2, rel=1e-6)
    assert stats["attention_max_weight"] == pytest.approx((0.5 + 1 / 8) / 2, rel=1e-6)
    assert attention_statistics(None) == {}
    assert attention_statistics(torch.tensor([[[0.9, -0.4]]])) == {}  # "unnormalised": no distribution


def test_forward_returns_the_attention_the_statistics_read():
    model = model_with_centres(aggregation="cosine", aggregation_temperature=0.05)
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0]]))
    assert out["attention"].shape == (2, 4, K * CENTRES)  # 32 px at output stride 16: 2 x 2
    stats = attention_statistics(out["attention"])
    assert 0 <= stats["attention_entropy_ratio"] <= 1 and 1 / (K * CENTRES) <= stats["attention_max_weight"] <= 1
