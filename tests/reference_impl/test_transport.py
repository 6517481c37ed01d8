"""Transport contract: the same checks run on InProcessTransport (threads) and TorchDistTransport
(3 processes over gloo on 127.0.0.1, spawned once for the whole module)."""

from __future__ import annotations

import math
import threading
import traceback
from collections.abc import Callable

import pytest
import torch

from reference_impl.distributed import run_in_group
from reference_impl.transport import (
    HEADER_BYTES,
    HEADER_LEN,
    MAX_NDIM,
    MAX_TENSORS,
    InProcessTransport,
    LinkProfile,
    TensorSpec,
    TorchDistTransport,
    Transport,
    decode_header,
    encode_header,
    kind_id,
    measure_link,
    pack_payload,
    payload_bytes,
    unpack_payload,
)

CHECK_TIMEOUT_S = 30.0


def _rand(seed: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Deterministic random tensor: sender and receiver regenerate the same values from the seed."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(-100, 100, shape, generator=g).to(dtype)


def _assert_same(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype and tuple(g.shape) == tuple(e.shape), (g.dtype, g.shape, e.dtype, e.shape)
        assert torch.equal(g.cpu(), e.cpu())


# ---- contract checks: each runs on both endpoints at once, check(transport, peer) ---------------------


def check_order_per_pair(t: Transport, peer: int) -> None:
    """Both sides send 30 messages first, then receive the peer's 30 in send order."""
    handles = [
        t.send(peer, "order", [torch.tensor([t.rank, i]), _rand(i, (i % 4, 3), torch.float32)])
        for i in range(30)
    ]
    for i in range(30):
        _assert_same(t.recv(peer, "order"), [torch.tensor([peer, i]), _rand(i, (i % 4, 3), torch.float32)])
    for h in handles:
        h.wait()


def check_kinds_interleaved(t: Transport, peer: int) -> None:
    """Kinds sent interleaved are received in another order; each kind keeps its own FIFO."""
    sent = [("qkv", 0), ("out", 0), ("ctrl", 0), ("qkv", 1), ("out", 1), ("qkv", 2)]
    if t.rank < peer:
        for kind, i in sent:
            t.send(peer, f"mix_{kind}", [torch.full((2,), kind_id(kind) + i)]).wait()
    else:
        early = t.irecv(peer, "mix_qkv")  # posted before anything arrives
        for kind, i in [("out", 0), ("out", 1), ("ctrl", 0), ("qkv", 1), ("qkv", 2)]:
            _assert_same(t.recv(peer, f"mix_{kind}"), [torch.full((2,), kind_id(kind) + i)])
        _assert_same(early.wait(CHECK_TIMEOUT_S), [torch.full((2,), kind_id("qkv"))])


def check_dtypes(t: Transport, peer: int) -> None:
    dtypes = [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.float64,
        torch.int8,
        torch.bool,
    ]
    if t.rank < peer:
        for i, d in enumerate(dtypes):
            t.send(peer, "dtype", [_rand(i, (5, 7), d)]).wait()
        t.send(peer, "dtype", [_rand(i, (3,), d) for i, d in enumerate(dtypes)]).wait()
    else:
        for i, d in enumerate(dtypes):
            _assert_same(t.recv(peer, "dtype"), [_rand(i, (5, 7), d)])
        _assert_same(t.recv(peer, "dtype"), [_rand(i, (3,), d) for i, d in enumerate(dtypes)])


def check_empty_tensors(t: Transport, peer: int) -> None:
    """0-row micro-batches, messages with no tensors, and the stream stays aligned after them."""
    empties = [
        torch.empty(0, 16, dtype=torch.float16),
        torch.empty(0),
        torch.empty(4, 0, 8, dtype=torch.bfloat16),
    ]
    if t.rank < peer:
        t.send(peer, "empty", [*empties, _rand(1, (2, 2), torch.float32)]).wait()
        t.send(peer, "empty", []).wait()
        t.send(peer, "empty", [_rand(2, (3,), torch.int64)]).wait()
    else:
        _assert_same(t.recv(peer, "empty"), [*empties, _rand(1, (2, 2), torch.float32)])
        assert t.recv(peer, "empty") == []
        _assert_same(t.recv(peer, "empty"), [_rand(2, (3,), torch.int64)])


def check_shapes(t: Transport, peer: int) -> None:
    """Ranks 0..MAX_NDIM, and a non-contiguous (transposed) input arriving contiguous and equal."""
    shapes = [(), (7,), (3, 5), (2, 3, 4), (2, 1, 3, 2), (1, 2, 1, 3, 2)]
    transposed = _rand(9, (6, 4), torch.float32).t()
    if t.rank < peer:
        t.send(peer, "shape", [_rand(i, s, torch.float32) for i, s in enumerate(shapes)]).wait()
        t.send(peer, "shape", [transposed]).wait()
    else:
        _assert_same(t.recv(peer, "shape"), [_rand(i, s, torch.float32) for i, s in enumerate(shapes)])
        (got,) = t.recv(peer, "shape")
        assert got.is_contiguous() and torch.equal(got, transposed)


def check_byte_accounting(t: Transport, peer: int) -> None:
    """Hand-worked: q (4, 64) fp16 = 512 B, k and v (4, 16) fp16 = 128 B each -> 768 B a message."""
    qkv = [torch.zeros(4, 64, dtype=torch.float16), torch.zeros(4, 16, dtype=torch.float16)]
    qkv.append(qkv[1].clone())
    if t.rank < peer:
        for _ in range(3):
            t.send(peer, "acct_qkv", qkv).wait()
        t.recv(peer, "acct_ack")
        s = t.stats.kind("acct_qkv")
        assert (s.messages_sent, s.payload_bytes_sent) == (3, 3 * 768)
        assert s.header_bytes_sent == 3 * t.header_bytes_per_message
        assert s.messages_received == 0 and s.send_s >= 0
    else:
        for _ in range(3):
            t.recv(peer, "acct_qkv")
        s = t.stats.kind("acct_qkv")
        assert (s.messages_received, s.payload_bytes_received) == (3, 3 * 768)
        assert s.header_bytes_received == 3 * t.header_bytes_per_message
        assert s.messages_sent == 0 and s.recv_wait_s >= 0
        t.send(peer, "acct_ack", []).wait()


def check_irecv_async_fifo(t: Transport, peer: int) -> None:
    """Receives posted before the sends: not done early, matched in posting order when waited out of order."""
    if t.rank < peer:
        t.recv(peer, "async_go")
        t.send(peer, "async", [torch.tensor([1])]).wait()
        t.send(peer, "async", [torch.tensor([2])]).wait()
    else:
        first, second = t.irecv(peer, "async"), t.irecv(peer, "async")
        assert not first.done() and not second.done()  # nothing can have arrived: the sender waits for "go"
        t.send(peer, "async_go", []).wait()
        _assert_same(second.wait(CHECK_TIMEOUT_S), [torch.tensor([2])])
        _assert_same(first.wait(CHECK_TIMEOUT_S), [torch.tensor([1])])
        assert first.done() and second.done()


def check_buffer_reuse_after_wait(t: Transport, peer: int) -> None:
    if t.rank < peer:
        x = _rand(5, (64, 64), torch.float32)
        t.send(peer, "reuse", [x]).wait()
        x.fill_(-1.0)  # allowed once the handle completed
        t.send(peer, "reuse", [x]).wait()
    else:
        _assert_same(t.recv(peer, "reuse"), [_rand(5, (64, 64), torch.float32)])
        _assert_same(t.recv(peer, "reuse"), [torch.full((64, 64), -1.0)])


PAIR_CHECKS: dict[str, Callable[[Transport, int], None]] = {
    f.__name__: f
    for f in (
        check_order_per_pair,
        check_kinds_interleaved,
        check_dtypes,
        check_empty_tensors,
        check_shapes,
        check_byte_accounting,
        check_irecv_async_fifo,
        check_buffer_reuse_after_wait,
    )
}


def check_three_ranks(t: Transport) -> None:
    """Rank 0 (compute) sends q/k/v to attention ranks 1 and 2 and collects their outputs in reverse
    order while 1 and 2 also exchange messages between themselves."""
    if t.rank == 0:
        for dst in (1, 2):
            t.send(dst, "qkv", [_rand(dst, (3, 8), torch.bfloat16)])
        for src in (2, 1):
            _assert_same(t.recv(src, "attn_out"), [_rand(src, (3, 8), torch.bfloat16) * 2])
    else:
        other = 3 - t.rank
        t.send(other, "peer", [torch.tensor([t.rank])])
        (qkv,) = t.recv(0, "qkv")
        t.send(0, "attn_out", [qkv * 2]).wait()
        _assert_same(t.recv(other, "peer"), [torch.tensor([other])])


LINK_SIZES_BYTES = (1_000, 64_000)


# ---- harnesses -----------------------------------------------------------------------------------


def _run_threads(endpoints: list[InProcessTransport], body: Callable[[InProcessTransport], None]) -> None:
    errors: list[str] = []

    def run(t: InProcessTransport) -> None:
        try:
            body(t)
        except BaseException:
            errors.append(f"rank {t.rank}: {traceback.format_exc()}")

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in endpoints]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=CHECK_TIMEOUT_S)
    assert not any(th.is_alive() for th in threads), "a rank hung"
    assert not errors, "\n".join(errors)


def _dist_contract(rank: int, world_size: int) -> dict:
    """Runs every contract check in one 3-process gloo group; returns {check: None | traceback}."""
    t = TorchDistTransport(timeout_s=CHECK_TIMEOUT_S)
    assert isinstance(t, Transport)
    outcome: dict = {"header_bytes_per_message": t.header_bytes_per_message}
    checks = [(name, lambda t=t, f=f: f(t, 1 - rank)) for name, f in PAIR_CHECKS.items()] if rank < 2 else []
    checks.append(("check_three_ranks", lambda: check_three_ranks(t)))
    for name, run in checks:
        try:
            run()
            outcome[name] = None
        except BaseException:
            outcome[name] = traceback.format_exc()
    if rank < 2:
        outcome["link"] = measure_link(t, 1 - rank, LINK_SIZES_BYTES, repeats=3, warmup=1)
    t.close()
    return outcome


@pytest.fixture(scope="module")
def dist_outcomes() -> list[dict]:
    return run_in_group(_dist_contract, world_size=3, timeout_s=120.0)


IMPLS = ["inprocess", "torchdist"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("check", list(PAIR_CHECKS))
def test_pair_contract(impl: str, check: str, request) -> None:
    if impl == "inprocess":
        endpoints = InProcessTransport.create(2, timeout_s=CHECK_TIMEOUT_S)
        _run_threads(endpoints, lambda t: PAIR_CHECKS[check](t, 1 - t.rank))
    else:
        outcomes = request.getfixturevalue("dist_outcomes")
        failures = [o[check] for o in outcomes[:2] if o[check] is not None]
        assert not failures, "\n".join(failures)


@pytest.mark.parametrize("impl", IMPLS)
def test_three_rank_contract(impl: str, request) -> None:
    if impl == "inprocess":
        _run_threads(InProcessTransport.create(3, timeout_s=CHECK_TIMEOUT_S), check_three_ranks)
    else:
        failures = [o["check_three_ranks"] for o in request.getfixturevalue("dist_outcomes")]
        assert not [f for f in failures if f is not None], "\n".join(f for f in failures if f)


def _assert_same_profile(a: LinkProfile, b: LinkProfile) -> None:
    """Equal field by field; bytes_per_s may be NaN on both (sizes too close in time to fit a slope)."""
    assert (a.points, a.latency_s, a.header_bytes_per_message) == (
        b.points,
        b.latency_s,
        b.header_bytes_per_message,
    )
    assert a.bytes_per_s == b.bytes_per_s or (math.isnan(a.bytes_per_s) and math.isnan(b.bytes_per_s))


def _check_link_profile(profile: LinkProfile) -> None:
    assert [p.size_bytes for p in profile.points] == list(LINK_SIZES_BYTES)
    for p in profile.points:
        assert p.one_way_s > 0 and p.bytes_per_s == pytest.approx(p.size_bytes / p.one_way_s)
    first, last = profile.points
    if last.one_way_s > first.one_way_s:  # the fitted line passes through both measured points
        assert profile.one_way_s(last.size_bytes) == pytest.approx(last.one_way_s)
        if profile.latency_s > 0:
            assert profile.one_way_s(first.size_bytes) == pytest.approx(first.one_way_s)


def test_measure_link_inprocess() -> None:
    endpoints = InProcessTransport.create(2, timeout_s=CHECK_TIMEOUT_S)
    profiles: dict[int, LinkProfile] = {}

    def body(t: InProcessTransport) -> None:
        profiles[t.rank] = measure_link(t, 1 - t.rank, LINK_SIZES_BYTES, repeats=3, warmup=1)

    _run_threads(endpoints, body)
    _assert_same_profile(profiles[0], profiles[1])  # the echoing side gets the initiator's timings
    _check_link_profile(profiles[0])
    assert profiles[0].header_bytes_per_message == 0
    # warm-up + repeats round trips per size, two messages each
    assert endpoints[0].stats.kind("link_ping").messages_sent == 2 * (1 + 3)


def test_measure_link_torchdist(dist_outcomes) -> None:
    a, b = dist_outcomes[0]["link"], dist_outcomes[1]["link"]
    _assert_same_profile(a, b)
    _check_link_profile(a)
    assert a.header_bytes_per_message == HEADER_BYTES


def test_measure_link_validates_sizes() -> None:
    t, _ = InProcessTransport.create(2)
    for sizes in ([], [0, 10], [100, 10], [10, 10]):
        with pytest.raises(ValueError, match="sizes_bytes"):
            measure_link(t, 1, sizes)


# ---- header and local validation -------------------------------------------------------------------


def test_header_size_is_stated_constant(dist_outcomes) -> None:
    # 4 fixed fields + 8 slots x (dtype, ndim, 5 dims) = 60 int64 = 480 bytes
    assert (HEADER_LEN, HEADER_BYTES, MAX_TENSORS, MAX_NDIM) == (60, 480, 8, 5)
    assert all(o["header_bytes_per_message"] == 480 for o in dist_outcomes)


def test_header_round_trip() -> None:
    tensors = [
        torch.empty(3, 0, 2, dtype=torch.bfloat16),
        torch.empty((), dtype=torch.int64),
        torch.empty(1, 2, 3, 4, 5),
    ]
    values = encode_header(7, "qkv", tensors)
    assert len(values) == HEADER_LEN
    header = decode_header(values)
    assert (header.seq, header.kind_id) == (7, kind_id("qkv"))
    assert [(s.dtype, s.shape) for s in header.specs] == [(t.dtype, tuple(t.shape)) for t in tensors]


def test_header_corruption_is_detected() -> None:
    values = encode_header(0, "qkv", [torch.zeros(2)])
    with pytest.raises(ValueError, match="misaligned"):
        decode_header([0, *values[1:]])
    with pytest.raises(ValueError, match="announces"):
        decode_header(values[:3] + [MAX_TENSORS + 1] + values[4:])
    bad_dtype = list(values)
    bad_dtype[4] = 99
    with pytest.raises(ValueError, match="slot 0"):
        decode_header(bad_dtype)


def test_payload_bytes_exact() -> None:
    tensors = [torch.zeros(3, 5, dtype=torch.bfloat16), torch.zeros(0, 9), torch.zeros(2, dtype=torch.int64)]
    assert payload_bytes(tensors) == 3 * 5 * 2 + 0 + 2 * 8


@pytest.mark.parametrize(
    ("dst", "tensors", "match"),
    [
        (0, [], "destination rank 0 is invalid"),
        (5, [], "destination rank 5 is invalid"),
        (1, [torch.zeros(1)] * (MAX_TENSORS + 1), "at most 8 tensors"),
        (1, [torch.zeros((1,) * (MAX_NDIM + 1))], "6 dims"),
        (1, [torch.zeros(2, dtype=torch.complex64)], "complex64; valid: float32"),
        (1, [[1.0, 2.0]], "not a torch.Tensor"),
    ],
)
def test_send_rejects_bad_input(dst: int, tensors: list, match: str) -> None:
    t, _ = InProcessTransport.create(2)
    with pytest.raises(ValueError, match=match):
        t.send(dst, "qkv", tensors)


def test_recv_timeout_names_kind_and_source() -> None:
    _, t = InProcessTransport.create(2)
    with pytest.raises(TimeoutError, match="'qkv' message from rank 0"):
        t.recv(0, "qkv", timeout_s=0.01)


def test_empty_kind_rejected() -> None:
    t, _ = InProcessTransport.create(2)
    with pytest.raises(ValueError, match="non-empty"):
        t.send(1, "", [])


def test_inprocess_delivers_on_receiver_device() -> None:
    a, b = InProcessTransport.create(2, devices=["cpu", "meta"])
    a.send(1, "x", [torch.ones(2)])
    (got,) = b.recv(0, "x")
    assert got.device.type == "meta"


def test_torchdist_requires_initialized_group() -> None:
    with pytest.raises(RuntimeError, match="not initialized"):
        TorchDistTransport()


def test_packed_payload_round_trips_mixed_dtypes_at_unaligned_sizes():
    tensors = [
        torch.randn(3).half(),  # 6 bytes: the next tensor would start unaligned without padding
        torch.randn(2, 3),
        torch.zeros(0, dtype=torch.int64),
        torch.tensor([True, False, True]),
        torch.arange(5),
        torch.randn(2, 2).t(),  # non-contiguous
        torch.tensor(3.5, dtype=torch.bfloat16),  # 0-dim
    ]
    buffer = pack_payload(tensors)
    sizes = [t.numel() * t.element_size() for t in tensors]
    out = unpack_payload(buffer, [TensorSpec(t.dtype, tuple(t.shape)) for t in tensors], sizes)
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(tensors, out, strict=True))
    assert payload_bytes(tensors) == sum(sizes)  # the padding is not payload
