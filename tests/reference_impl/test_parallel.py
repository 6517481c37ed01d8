"""reference_impl.parallel: sharding arithmetic, and column/row linears over 2 gloo ranks vs nn.Linear."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from reference_impl.errors import ConfigError
from reference_impl.parallel import ColumnParallelLinear, RowParallelLinear, all_reduce, shard, shard_range
from tests.reference_impl.tiny_models import free_port, init_gloo


def test_shard_range_hand_worked():
    assert shard_range(12, 0, 3) == (0, 4)
    assert shard_range(12, 2, 3) == (8, 12)
    assert shard_range(5, 0, 1) == (0, 5)


def test_shard_picks_contiguous_chunks():
    t = torch.arange(24).view(4, 6)
    assert torch.equal(shard(t, 0, 1, 2), torch.tensor([[12, 13, 14, 15, 16, 17], [18, 19, 20, 21, 22, 23]]))
    assert torch.equal(shard(t, 1, 2, 3), torch.tensor([[4, 5], [10, 11], [16, 17], [22, 23]]))


@pytest.mark.parametrize(("length", "rank", "size"), [(10, 0, 4), (8, 2, 2), (8, -1, 2), (8, 0, 0)])
def test_shard_range_rejects_bad_splits(length, rank, size):
    with pytest.raises(ConfigError):
        shard_range(length, rank, size)


def test_tp1_layers_equal_nn_linear():
    torch.manual_seed(0)
    ref = torch.nn.Linear(8, 6)
    x = torch.randn(5, 8)
    col = ColumnParallelLinear(8, 6, bias=True).load_full_(ref.weight.data, ref.bias.data)
    row = RowParallelLinear(8, 6, bias=True).load_full_(ref.weight.data, ref.bias.data)
    assert torch.equal(col(x), ref(x)) and torch.equal(row(x), ref(x))


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    init_gloo(rank, world_size, port)
    try:
        gen = torch.Generator().manual_seed(0)  # same full weights and input on every rank
        w1, b1 = torch.randn(12, 8, generator=gen), torch.randn(12, generator=gen)
        w2, b2 = torch.randn(8, 12, generator=gen), torch.randn(8, generator=gen)
        x = torch.randn(5, 8, generator=gen)
        col = ColumnParallelLinear(8, 12, True, rank, world_size).load_full_(w1, b1)
        row = RowParallelLinear(12, 8, True, rank, world_size).load_full_(w2, b2)
        h = col(x)  # (5, 6): this rank's half of the 12 features
        y = row(F.relu(h))  # (5, 8): full, all-reduced
        summed = all_reduce(torch.full((3,), float(rank + 1)))  # 1 + 2 on both ranks
        torch.save(
            {"h": h, "y": y, "sum": summed, "w_shapes": (col.weight.shape, row.weight.shape)},
            f"{out_dir}/{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_column_then_row_over_two_gloo_ranks(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    gen = torch.Generator().manual_seed(0)
    w1, b1 = torch.randn(12, 8, generator=gen), torch.randn(12, generator=gen)
    w2, b2 = torch.randn(8, 12, generator=gen), torch.randn(8, generator=gen)
    x = torch.randn(5, 8, generator=gen)
    h_full = F.linear(x, w1, b1)
    y_full = F.linear(F.relu(h_full), w2, b2)
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt")
        assert got["w_shapes"] == (torch.Size([6, 8]), torch.Size([8, 6]))
        torch.testing.assert_close(got["h"], h_full[:, 6 * rank : 6 * (rank + 1)], atol=1e-6, rtol=1e-6)
        # bias added once after the sum: adding it per rank would be off by b2 here
        torch.testing.assert_close(got["y"], y_full, atol=1e-5, rtol=1e-5)
        assert torch.equal(got["sum"], torch.full((3,), 3.0))
