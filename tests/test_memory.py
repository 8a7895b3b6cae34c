"""Tests of rca.memory.RegionalMemory: FIFO/EMA rules, keys, state_dict, DDP all-gather."""

import pytest
import torch
import torch.nn.functional as F

from rca.memory import RegionalMemory

from helpers import spawn_gloo


def one_hot_rows(indices, dim):
    return F.one_hot(torch.as_tensor(indices), dim).float()


def reference_push(bank, ptr, filled, embeddings, labels, mode, momentum):
    """One embedding at a time, exactly as the rules are written (slow but obvious)."""
    bank, ptr, filled = bank.clone(), ptr.clone(), filled.clone()
    size = bank.shape[1]
    for e, c in zip(F.normalize(embeddings, dim=1), labels.tolist()):
        p = int(ptr[c])
        if mode == "ema" and p < filled[c]:
            e = F.normalize(momentum * bank[c, p] + (1 - momentum) * e, dim=0)
        bank[c, p] = e
        ptr[c] = (p + 1) % size
        filled[c] = min(int(filled[c]) + 1, size)
    return bank, ptr, filled


def test_fifo_replaces_oldest_with_wrap_around():
    memory = RegionalMemory(num_classes=2, size=3, dim=6, mode="fifo")
    memory.push(one_hot_rows([0, 1, 2], 6), torch.tensor([0, 0, 0]))
    assert memory.ptr.tolist() == [0, 0] and memory.filled.tolist() == [3, 0]
    memory.push(one_hot_rows([3], 6), torch.tensor([0]))  # replaces the oldest entry, e0
    assert torch.equal(memory.bank[0], one_hot_rows([3, 1, 2], 6))
    # one push with 5 entries of class 0 laps the ring: slots 1, 2, 0, 1, 2 -> last writes win
    memory.push(one_hot_rows([4, 5, 0, 1, 2], 6) * 3.0, torch.tensor([0, 0, 0, 0, 0]))
    assert torch.equal(memory.bank[0], one_hot_rows([0, 1, 2], 6))
    assert memory.ptr.tolist() == [0, 0] and memory.filled.tolist() == [3, 0]
    assert memory.bank[1].abs().sum() == 0


def test_classes_are_independent_and_embeddings_normalised():
    memory = RegionalMemory(num_classes=3, size=4, dim=2)
    memory.push(torch.tensor([[3.0, 4.0], [0.0, 2.0], [5.0, 0.0]]), torch.tensor([2, 0, 2]))
    assert memory.ptr.tolist() == [1, 0, 2] and memory.filled.tolist() == [1, 0, 2]
    assert torch.allclose(memory.bank[2, :2], torch.tensor([[0.6, 0.8], [1.0, 0.0]]))
    assert torch.allclose(memory.bank[0, 0], torch.tensor([0.0, 1.0]))
    assert len(memory) == 3 and memory.num_filled.tolist() == [1, 0, 2]


def test_ema_blending_by_hand():
    memory = RegionalMemory(num_classes=1, size=2, dim=2, mode="ema", momentum=0.5)
    memory.push(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))  # empty slots
    assert torch.allclose(memory.bank[0], torch.eye(2))
    memory.push(torch.tensor([[0.0, 1.0]]), torch.tensor([0]))  # slot 0: 0.5*e0 + 0.5*e1
    r = 2 ** -0.5
    assert torch.allclose(memory.bank[0], torch.tensor([[r, r], [0.0, 1.0]]))
    memory.push(torch.tensor([[-2.0, 0.0]]), torch.tensor([0]))  # slot 1: 0.5*e1 - 0.5*e0
    assert torch.allclose(memory.bank[0], torch.tensor([[r, r], [-r, r]]))
    assert memory.ptr.tolist() == [0] and memory.filled.tolist() == [2]


@pytest.mark.parametrize("mode", ["fifo", "ema"])
def test_vectorised_push_matches_one_at_a_time(mode):
    generator = torch.Generator().manual_seed(0)
    memory = RegionalMemory(num_classes=3, size=4, dim=5, mode=mode, momentum=0.7)
    bank, ptr, filled = memory.bank.clone(), memory.ptr.clone(), memory.filled.clone()
    for n in (2, 0, 7, 11, 1, 9):  # batches below, at and well above the ring size
        embeddings = torch.randn(n, 5, generator=generator)
        labels = torch.randint(0, 3, (n,), generator=generator)
        memory.push(embeddings, labels)
        bank, ptr, filled = reference_push(bank, ptr, filled, embeddings, labels, mode, 0.7)
        assert torch.allclose(memory.bank, bank, atol=1e-6)
        assert torch.equal(memory.ptr, ptr) and torch.equal(memory.filled, filled)


def test_keys_returns_filled_entries_only():
    memory = RegionalMemory(num_classes=3, size=4, dim=3)
    memory.push(torch.tensor([[2.0, 0, 0], [0, 3.0, 0], [0, 0, 4.0]]), torch.tensor([1, 1, 2]))
    keys, labels = memory.keys()
    assert labels.dtype == torch.int64 and labels.tolist() == [1, 1, 2]
    assert torch.allclose(keys, torch.eye(3))
    empty_keys, empty_labels = RegionalMemory(2, 3, 3).keys()
    assert empty_keys.shape == (0, 3) and empty_labels.shape == (0,)


def test_state_dict_round_trip_includes_pointers():
    generator = torch.Generator().manual_seed(1)
    memory = RegionalMemory(num_classes=4, size=3, dim=8, mode="ema", momentum=0.9)
    memory.push(torch.randn(10, 8, generator=generator), torch.randint(0, 4, (10,),
                                                                       generator=generator))
    restored = RegionalMemory(num_classes=4, size=3, dim=8, mode="ema", momentum=0.9)
    restored.load_state_dict(memory.state_dict())
    for name in ("bank", "ptr", "filled"):
        assert torch.equal(getattr(restored, name), getattr(memory, name))
    more, labels = torch.randn(5, 8, generator=generator), torch.tensor([0, 1, 2, 3, 3])
    memory.push(more, labels)
    restored.push(more, labels)
    assert torch.equal(restored.bank, memory.bank) and torch.equal(restored.ptr, memory.ptr)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="mode"):
        RegionalMemory(2, mode="lifo")
    with pytest.raises(ValueError, match="momentum"):
        RegionalMemory(2, mode="ema", momentum=1.0)
    memory = RegionalMemory(num_classes=2, size=3, dim=4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        memory.push(torch.randn(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        memory.push(torch.randn(2, 4), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="integer"):
        memory.push(torch.randn(2, 4), torch.tensor([0.0, 1.0]))


def _rank_rows(rank):
    """Rank 0 holds 3 regions, rank 1 holds 5: distinct rows, labels mixed over 2 classes."""
    n = 3 if rank == 0 else 5
    embeddings = torch.full((n, 4), float(rank + 1))
    embeddings[:, rank] += torch.arange(1, n + 1).float()
    labels = torch.tensor([0, 1, 0]) if rank == 0 else torch.tensor([1, 1, 0, 1, 0])
    return embeddings, labels


def _ddp_worker(rank, world_size, out_dir):
    memory = RegionalMemory(num_classes=2, size=8, dim=4)
    memory.push(*_rank_rows(rank))
    torch.save(memory.state_dict(), f"{out_dir}/rank{rank}.pt")


def test_push_under_ddp_gathers_all_ranks(tmp_path):
    spawn_gloo(_ddp_worker, 2, tmp_path, str(tmp_path))
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in ("bank", "ptr", "filled"):
        assert torch.equal(states[0][name], states[1][name])
    # every rank must hold what one process pushing [rank 0 rows; rank 1 rows] would hold
    (e0, l0), (e1, l1) = _rank_rows(0), _rank_rows(1)
    expected = RegionalMemory(num_classes=2, size=8, dim=4)
    expected.push(torch.cat([e0, e1]), torch.cat([l0, l1]))
    assert states[0]["filled"].tolist() == [4, 4]
    assert torch.allclose(states[0]["bank"], expected.bank)
    assert torch.equal(states[0]["ptr"], expected.ptr)


def test_fill_random_fills_every_slot_with_unit_vectors():
    memory = RegionalMemory(num_classes=3, size=5, dim=8, mode="fifo")
    memory.push(one_hot_rows([0], 8), torch.tensor([1]))
    memory.fill_random(torch.Generator().manual_seed(0))
    assert len(memory) == 15 and memory.filled.tolist() == [5, 5, 5] and memory.ptr.tolist() == [0, 0, 0]
    keys, labels = memory.keys()
    assert torch.allclose(keys.norm(dim=1), torch.ones(15), atol=1e-6)
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert len({tuple(k.tolist()) for k in keys}) == 15  # random draws, no repeats
    again = RegionalMemory(num_classes=3, size=5, dim=8)
    again.fill_random(torch.Generator().manual_seed(0))
    assert torch.equal(again.bank, memory.bank)  # reproducible from the generator
    memory.push(one_hot_rows([2], 8), torch.tensor([1]))  # the next write replaces slot 0, the oldest
    assert torch.equal(memory.bank[1, 0], one_hot_rows([2], 8)[0]) and len(memory) == 15
