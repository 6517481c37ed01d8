"""Scheduling of the engine against a fake executor whose next token is (last token + 1) mod V."""

import pytest
import torch

from reference_impl.engine import Engine, Request, SamplingParams
from reference_impl.errors import ConfigError
from reference_impl.kv_accounting import blocks_for_requests

VOCAB = 50


class CountingExecutor:
    """KV accounting in whole tokens; logits put all mass on (last input token + 1) % VOCAB."""

    def __init__(self, capacity_tokens: int, max_position: int = 1000):
        self.capacity = capacity_tokens
        self.max_position = max_position
        self.reserved: dict[int, int] = {}
        self.peak_reserved = 0
        self.calls: list[tuple[list[int], list[int]]] = []  # (seq_ids, query lengths) per forward

    def kv_capacity_tokens(self):
        return self.capacity

    def kv_free_tokens(self):
        return self.capacity - sum(self.reserved.values())

    def can_reserve(self, n):
        return n <= self.kv_free_tokens()

    def reserve(self, seq_id, n):
        assert seq_id not in self.reserved and self.can_reserve(n)
        self.reserved[seq_id] = n
        self.peak_reserved = max(self.peak_reserved, sum(self.reserved.values()))

    def free(self, seq_id):
        del self.reserved[seq_id]

    def forward(self, seq_ids, tokens):
        assert all(s in self.reserved for s in seq_ids)
        self.calls.append((list(seq_ids), [len(t) for t in tokens]))
        logits = torch.full((len(seq_ids), VOCAB), -1.0)
        for i, chunk in enumerate(tokens):
            logits[i, (chunk[-1] + 1) % VOCAB] = 1.0
        return logits

    def agree(self, ids):
        return ids


def _expected(req: Request) -> tuple[int, ...]:
    return tuple((req.prompt_ids[-1] + i) % VOCAB for i in range(1, req.max_new_tokens + 1))


def test_every_request_completes_in_input_order_with_expected_tokens():
    reqs = [Request(i, tuple(range(i, i + 3 + i)), max_new_tokens=4 + i) for i in range(6)]
    run = Engine(CountingExecutor(10_000)).run(reqs)
    assert [c.request_id for c in run.completions] == list(range(6))
    for req, c in zip(reqs, run.completions, strict=True):
        assert c.output_ids == _expected(req)
        assert c.finish_reason == "length"
        assert len(c.token_times_s) == len(c.output_ids)
    assert run.generated_tokens == sum(r.max_new_tokens for r in reqs)


def test_admission_waits_for_kv_and_never_exceeds_capacity():
    reqs = [Request(i, (1,) * 10, max_new_tokens=10) for i in range(5)]  # 20 tokens each
    ex = CountingExecutor(capacity_tokens=45)  # room for two at a time
    run = Engine(ex).run(reqs)
    assert ex.peak_reserved == 40
    assert max(it.waiting for it in run.iterations) == 3  # three queued while two run
    assert all(c.output_ids == _expected(r) for r, c in zip(reqs, run.completions, strict=True))
    # FIFO: admission steps never decrease with the request order
    steps = [c.admitted_step for c in run.completions]
    assert steps == sorted(steps) and steps[0] < steps[-1]
    assert not ex.reserved  # everything freed


def test_requests_join_while_others_decode():
    reqs = [Request(0, (5,), max_new_tokens=8), Request(1, (7, 8), max_new_tokens=3, arrival_step=3)]
    ex = CountingExecutor(1000)
    run = Engine(ex).run(reqs)
    assert run.completions[1].admitted_step == 3
    # iteration 3 decodes request 0 and prefills request 1 (a 2-token chunk)
    assert ex.calls[3] == ([0], [1]) and ex.calls[4] == ([1], [2])
    assert run.iterations[3].decode_seqs == 1 and run.iterations[3].prefill_seqs == 1


def test_max_batch_size_caps_running_requests():
    reqs = [Request(i, (1, 2), max_new_tokens=5) for i in range(4)]
    ex = CountingExecutor(1000)
    run = Engine(ex, max_batch_size=2).run(reqs)
    assert max(it.decode_seqs for it in run.iterations) == 2
    assert run.generated_tokens == 20


def test_stop_token_ends_a_request_early():
    req = Request(0, (10,), max_new_tokens=20)
    run = Engine(CountingExecutor(100), SamplingParams(stop_token_ids=(13,))).run([req])
    assert run.completions[0].output_ids == (11, 12, 13)
    assert run.completions[0].finish_reason == "stop"


def test_max_new_tokens_1_gives_exactly_the_prefill_token():
    reqs = [Request(0, (4, 5), max_new_tokens=1), Request(1, (7,), max_new_tokens=3)]
    ex = CountingExecutor(100)
    run = Engine(ex).run(reqs)
    assert run.completions[0].output_ids == (6,) and run.completions[0].finish_reason == "length"
    assert run.completions[1].output_ids == (8, 9, 10)
    assert all(0 not in seq_ids for seq_ids, _ in ex.calls[1:])  # request 0 is never decoded
    assert not ex.reserved


def test_stop_id_as_the_first_token_ends_the_request_after_its_prefill():
    req = Request(0, (12,), max_new_tokens=20)
    ex = CountingExecutor(100)
    run = Engine(ex, SamplingParams(stop_token_ids=(13,))).run([req])
    assert run.completions[0].output_ids == (13,)
    assert run.completions[0].finish_reason == "stop"
    assert len(ex.calls) == 1 and run.iterations[0].decode_seqs == 0 and not ex.reserved


def test_temperature_sampling_is_seeded():
    reqs = [Request(i, (3, 4), max_new_tokens=6) for i in range(3)]

    class Flat(CountingExecutor):
        def forward(self, seq_ids, tokens):
            return torch.zeros(len(seq_ids), VOCAB)

    a = Engine(Flat(1000), SamplingParams(temperature=1.0, seed=7)).run(reqs)
    b = Engine(Flat(1000), SamplingParams(temperature=1.0, seed=7)).run(reqs)
    c = Engine(Flat(1000), SamplingParams(temperature=1.0, seed=8)).run(reqs)
    assert [x.output_ids for x in a.completions] == [x.output_ids for x in b.completions]
    assert [x.output_ids for x in a.completions] != [x.output_ids for x in c.completions]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Request(0, (), 4), "empty prompt"),
        (lambda: Request(0, (1,), 0), "max_new_tokens"),
        (lambda: SamplingParams(temperature=-1), "temperature"),
    ],
)
def test_bad_requests_are_config_errors(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_request_longer_than_model_or_cache_is_rejected_before_work():
    ex = CountingExecutor(capacity_tokens=30, max_position=25)
    with pytest.raises(ConfigError, match="exceeds the model's maximum of 25"):
        Engine(ex).run([Request(0, (1,) * 20, max_new_tokens=10)])
    with pytest.raises(ConfigError, match="whole cache holds 30"):
        Engine(CountingExecutor(capacity_tokens=30)).run([Request(0, (1,) * 20, max_new_tokens=11)])
    assert not ex.calls


def test_blocks_for_requests_rounds_up_per_request():
    reqs = [Request(0, (1,) * 15, 1), Request(1, (1,) * 16, 1)]  # 16 and 17 tokens
    assert blocks_for_requests(reqs, block_size=16) == 1 + 2
