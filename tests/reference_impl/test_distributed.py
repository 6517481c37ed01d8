"""reference_impl.distributed: run_in_group's results and failures, loopback pinning of gloo."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
import torch.distributed as dist

from reference_impl.distributed import _loopback_interface, pin_gloo_to_loopback, run_in_group


def _rank_sum(rank: int, world_size: int, base: int) -> int:
    """Each rank's value is base + rank; the all-reduce proves the ranks formed one group."""
    value = torch.tensor([base + rank])
    dist.all_reduce(value)
    return int(value) * 10 + rank


def _fail_or_block(rank: int, world_size: int) -> None:
    if rank == 1:
        raise ValueError("rank 1 fails on purpose")
    threading.Event().wait()  # rank 0 never returns by itself: a peer waiting for rank 1 forever


def test_results_come_back_by_rank():
    assert run_in_group(_rank_sum, 2, args=(5,), timeout_s=60) == [110, 111]  # (5 + 6) * 10 + rank


def test_a_failing_rank_stops_the_group_at_once():
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="rank 1 fails on purpose"):
        run_in_group(_fail_or_block, 2, timeout_s=300)
    assert time.monotonic() - started < 60  # spawning takes seconds; the old wait was the timeout


def test_gloo_interface_set_by_the_user_is_kept(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth7")
    pin_gloo_to_loopback()
    assert os.environ["GLOO_SOCKET_IFNAME"] == "eth7"
    monkeypatch.delenv("GLOO_SOCKET_IFNAME")
    pin_gloo_to_loopback()
    assert os.environ.get("GLOO_SOCKET_IFNAME") == _loopback_interface()
