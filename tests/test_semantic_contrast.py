"""Tests of rca.losses.semantic_contrast: known values, skip rules, stability, region mix-up."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rca.losses import mix_regions, mixed_semantic_contrast_loss, semantic_contrast_loss


def reference_loss(queries, query_labels, keys, key_labels, t):
    """The loss written term by term with Python loops."""
    q, k = F.normalize(queries, dim=1), F.normalize(keys, dim=1)
    per_query = []
    for qi, ci in zip(q, query_labels.tolist()):
        negatives = [kj for kj, cj in zip(k, key_labels.tolist()) if cj != ci]
        positives = [kj for kj, cj in zip(k, key_labels.tolist()) if cj == ci]
        if not negatives or not positives:
            continue
        neg_sum = sum(math.exp(float(qi @ kn) / t) for kn in negatives)
        terms = [-math.log(math.exp(float(qi @ kp) / t) / (math.exp(float(qi @ kp) / t) + neg_sum))
                 for kp in positives]
        per_query.append(sum(terms) / len(terms))
    return sum(per_query) / len(per_query)


@pytest.mark.parametrize("t", [0.07, 0.5, 1.0])
@pytest.mark.parametrize("p", [1, 3, 10])
def test_known_value_query_equal_to_positives(t, p):
    eye = torch.eye(p + 1)
    keys = torch.cat([eye[:1], eye[:1] * 2.0, eye[1:]])  # two positives equal to q, p negatives
    key_labels = torch.tensor([0, 0] + [1 + i % 3 for i in range(p)])
    loss = semantic_contrast_loss(eye[:1], torch.tensor([0]), keys, key_labels, temperature=t)
    assert loss.item() == pytest.approx(math.log(1 + p * math.exp(-1 / t)), rel=1e-5)


@pytest.mark.parametrize("t", [0.07, 0.5, 1.0])
@pytest.mark.parametrize("p", [1, 3, 10])
def test_known_value_query_orthogonal_to_all(t, p):
    eye = torch.eye(p + 2)
    keys, key_labels = eye[1:], torch.tensor([0] + [1] * p)  # one positive, p negatives
    loss = semantic_contrast_loss(eye[:1], torch.tensor([0]), keys, key_labels, temperature=t)
    assert loss.item() == pytest.approx(math.log(1 + p), rel=1e-5)


def test_mean_over_positives_by_hand():
    # q = e0; positives e0 (logit 1) and e1 (logit 0); one negative -e0 (logit -1); t = 1
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    loss = semantic_contrast_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([3]), keys,
                                  torch.tensor([3, 3, 5]), temperature=1.0)
    expected = 0.5 * (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_matches_loop_reference_and_is_scale_invariant():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(7, 16, generator=generator)
    keys = torch.randn(40, 16, generator=generator)
    query_labels = torch.tensor([0, 1, 2, 3, 0, 1, 4])  # class 4 has no key: skipped
    key_labels = torch.randint(0, 4, (40,), generator=generator)
    loss = semantic_contrast_loss(queries, query_labels, keys, key_labels, temperature=0.2)
    assert loss.item() == pytest.approx(
        reference_loss(queries, query_labels, keys, key_labels, 0.2), rel=1e-5)
    scaled = semantic_contrast_loss(queries * 3.0, query_labels, keys * 0.1, key_labels, 0.2)
    assert scaled.item() == pytest.approx(loss.item(), rel=1e-5)


def test_skip_rules_and_zero_without_nan():
    keys, key_labels = torch.eye(3), torch.tensor([0, 0, 1])
    valid = torch.tensor([[1.0, 0.2, 0.3]])
    alone = semantic_contrast_loss(valid, torch.tensor([0]), keys, key_labels)
    # a query of an absent class (2) is skipped, not averaged in as zero
    with_absent = semantic_contrast_loss(torch.cat([valid, valid]), torch.tensor([0, 2]), keys,
                                         key_labels)
    assert with_absent.item() == pytest.approx(alone.item(), rel=1e-6)
    # no negative (memory holds only the query's class) and no positive: zero keeping the graph
    queries = torch.randn(2, 3, requires_grad=True)
    zero = semantic_contrast_loss(queries, torch.tensor([0, 4]), keys[:2], key_labels[:2])
    assert zero.item() == 0.0 and zero.requires_grad
    zero.backward()
    assert torch.equal(queries.grad, torch.zeros(2, 3))
    # an empty memory (first iterations) also gives 0, not NaN
    empty = semantic_contrast_loss(queries, torch.tensor([0, 1]), torch.zeros(0, 3),
                                   torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0


def test_gradient_flows_to_queries_and_no_nan_at_tiny_temperature():
    generator = torch.Generator().manual_seed(3)
    queries = torch.randn(5, 8, generator=generator, requires_grad=True)
    keys = torch.randn(30, 8, generator=generator)
    key_labels = torch.arange(30) % 3
    query_labels = torch.tensor([0, 1, 2, 0, 1])
    loss = semantic_contrast_loss(queries, query_labels, keys, key_labels, temperature=1e-3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(queries.grad).all()
    assert queries.grad.abs().sum() > 0
    # a small step against the gradient lowers the loss (t = 0.07)
    q = queries.detach().clone().requires_grad_(True)
    before = semantic_contrast_loss(q, query_labels, keys, key_labels)
    before.backward()
    after = semantic_contrast_loss(q.detach() - 0.05 * q.grad, query_labels, keys, key_labels)
    assert after < before


def test_bad_input_raises():
    with pytest.raises(ValueError, match="same D"):
        semantic_contrast_loss(torch.randn(2, 4), torch.zeros(2), torch.randn(3, 5), torch.zeros(3))
    with pytest.raises(ValueError, match="one label per row"):
        semantic_contrast_loss(torch.randn(2, 4), torch.zeros(3), torch.randn(3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        semantic_contrast_loss(torch.randn(2, 4), torch.zeros(2), torch.randn(3, 4),
                               torch.zeros(3), temperature=0.0)


def test_mix_regions_mixes_with_partner_labels():
    embeddings, labels = torch.eye(6) * 2.0, torch.arange(6)  # label i <-> row e_i
    mixed, labels_a, labels_b, lam = mix_regions(embeddings, labels,
                                                 generator=torch.Generator().manual_seed(0))
    assert lam.shape == (6,) and torch.all((lam > 0) & (lam < 1))
    assert torch.equal(labels_a, labels)
    expected = lam[:, None] * torch.eye(6) + (1 - lam[:, None]) * torch.eye(6)[labels_b]
    assert torch.allclose(mixed, expected)
    again = mix_regions(embeddings, labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[3], lam) and torch.equal(again[2], labels_b)


def test_mix_partner_is_another_class_from_another_image_where_one_exists():
    # image 0: classes 0, 1; image 1: class 0; image 2: classes 1, 2; image 3: class 2
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    images = torch.tensor([0, 0, 1, 2, 2, 3])
    embeddings = torch.randn(6, 4)
    for seed in range(50):
        _, _, partner_labels, lam = mix_regions(embeddings, labels, images,
                                                generator=torch.Generator().manual_seed(seed))
        assert torch.all(partner_labels != labels) and torch.all(lam < 1)
        # region 0 (image 0, class 0) may only pair with image 2's classes 1/2 or image 3's class 2
        assert partner_labels[0] in (1, 2)
    # every other-image, other-class candidate of region 0 is drawn over the seeds
    partners = set()
    for seed in range(200):
        mixed = mix_regions(torch.eye(6), labels, images, generator=torch.Generator().manual_seed(seed))[0]
        partners.add(int(mixed[0, 1:].argmax()) + 1)
    assert partners == {3, 4, 5}
    # only the same image holds another class: it is used; a one-class batch is not mixed
    same_image = mix_regions(torch.eye(2), torch.tensor([0, 1]), torch.tensor([0, 0]))
    assert same_image[2].tolist() == [1, 0]
    mixed, _, partner_labels, lam = mix_regions(torch.eye(3), torch.tensor([4, 4, 4]), torch.arange(3))
    assert torch.equal(lam, torch.ones(3)) and torch.equal(mixed, torch.eye(3))
    with pytest.raises(ValueError, match="image index"):
        mix_regions(torch.eye(3), torch.tensor([4, 4, 4]), torch.arange(2))


def test_mix_lambda_is_exactly_the_beta_order_statistic_for_a_seed():
    # Beta(a, a) is the a-th smallest of 2a - 1 uniforms; alpha = 1 is the uniform itself.
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    lam = mix_regions(x, y, alpha=1, generator=torch.Generator().manual_seed(7))[3]
    torch.testing.assert_close(lam, torch.rand(5, 1, generator=torch.Generator().manual_seed(7))[:, 0],
                               rtol=0, atol=0)
    lam = mix_regions(x, y, alpha=3, generator=torch.Generator().manual_seed(7))[3]
    uniforms = torch.rand(5, 5, generator=torch.Generator().manual_seed(7))
    expected = [sorted(row)[2] for row in uniforms.tolist()]
    assert lam.tolist() == pytest.approx(expected, abs=0)
    assert len(set(lam.tolist())) == 5  # one lambda per region
    with pytest.raises(ValueError, match="alpha"):
        mix_regions(x, y, alpha=0.5)


def test_mix_lambda_follows_beta_8_8():
    # 4000 draws for seed 0: Kolmogorov-Smirnov against scipy's Beta(8, 8); fixed seed, fixed answer.
    stats = pytest.importorskip("scipy.stats")
    x, y = torch.randn(4000, 2), torch.arange(4000) % 2
    lams = mix_regions(x, y, generator=torch.Generator().manual_seed(0))[3].double().numpy()
    assert stats.kstest(lams, stats.beta(8, 8).cdf).pvalue > 0.05
    assert lams.mean() == pytest.approx(0.5, abs=0.01)
    assert lams.var() == pytest.approx(1 / (4 * 17), rel=0.1)  # a*a/((2a)^2 (2a+1))
    # a uniform lambda would fail the same test
    assert stats.kstest(np.random.default_rng(0).uniform(size=4000), stats.beta(8, 8).cdf).pvalue < 1e-6


def test_mixed_loss_is_the_per_region_lambda_weighted_sum():
    generator = torch.Generator().manual_seed(5)
    embeddings = torch.randn(6, 8, generator=generator)
    labels, keys = torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(24, 8, generator=generator)
    images = torch.tensor([0, 0, 1, 2, 3, 3])
    key_labels = torch.arange(24) % 3
    loss = mixed_semantic_contrast_loss(embeddings, labels, keys, key_labels, temperature=0.1,
                                        generator=torch.Generator().manual_seed(9), image_index=images)
    mixed, labels_a, labels_b, lam = mix_regions(embeddings, labels, images,
                                                 generator=torch.Generator().manual_seed(9))
    expected = sum(
        lam[i] * reference_loss(mixed[i:i + 1], labels_a[i:i + 1], keys, key_labels, 0.1)
        + (1 - lam[i]) * reference_loss(mixed[i:i + 1], labels_b[i:i + 1], keys, key_labels, 0.1)
        for i in range(6)) / 6
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)


def test_mixed_loss_drops_a_term_without_positives_and_keeps_the_graph():
    keys, key_labels = torch.eye(3), torch.tensor([0, 1, 1])
    embeddings = torch.tensor([[1.0, 0.2, 0.0], [0.0, 1.0, 0.3]], requires_grad=True)
    labels = torch.tensor([0, 2])  # class 2 has no memory entry: only the class-0 term counts
    loss = mixed_semantic_contrast_loss(embeddings, labels, keys, key_labels, 0.5,
                                        generator=torch.Generator().manual_seed(0))
    mixed = mix_regions(embeddings, labels, generator=torch.Generator().manual_seed(0))[0]
    expected = reference_loss(mixed.detach(), torch.tensor([0, 0]), keys, key_labels, 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    zero = mixed_semantic_contrast_loss(embeddings, torch.tensor([2, 3]), keys, key_labels)
    assert zero.item() == 0.0 and zero.requires_grad
