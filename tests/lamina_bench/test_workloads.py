"""Traces: shipped files intact, counts and means as published, fast loading; synthetic workloads."""

import hashlib
import re
import time

import numpy as np
import pytest

from lamina_bench.catalog.workloads import TRACE_DIR, TRACES, load_trace, poisson_arrivals, synthetic_trace
from lamina_bench.errors import UserInputError

# requests, mean prompt, mean generated: the table of lamina_bench/data/traces/README.md
PUBLISHED = {
    "azure-conv": (19_366, 1154.7, 211.1),
    "azure-code": (8_819, 2047.8, 27.9),
    "kimi-conv": (12_031, 12035.1, 342.6),
}


def test_shipped_files_match_readme_sha256():
    listed = re.findall(r"^([0-9a-f]{64})  (\S+)$", (TRACE_DIR / "README.md").read_text(), re.MULTILINE)
    assert len(listed) == 3
    for digest, filename in listed:
        assert hashlib.sha256((TRACE_DIR / filename).read_bytes()).hexdigest() == digest, filename


@pytest.mark.parametrize("name", TRACES)
def test_trace_counts_means_and_arrivals(name):
    trace = load_trace(name)
    count, mean_prompt, mean_output = PUBLISHED[name]
    assert len(trace) == count
    assert round(float(trace.prompt_len.mean()), 1) == mean_prompt
    assert round(float(trace.output_len.mean()), 1) == mean_output
    assert trace.arrival_s.dtype == np.float64 and trace.prompt_len.dtype == np.int64
    assert trace.output_len.dtype == np.int64
    assert trace.arrival_s[0] == 0 and np.all(np.diff(trace.arrival_s) >= 0)
    assert 3000 < trace.arrival_s[-1] < 3600  # each trace covers about an hour
    assert trace.name == name and trace.source
    assert not trace.arrival_s.flags.writeable  # the cached trace is shared


def test_first_rows_parsed_exactly():
    conv = load_trace("azure-conv")
    # rows 1-2: 18:15:46.6805900 (374, 44) and 18:15:50.9951690 (396, 109)
    assert conv.arrival_s[1] == pytest.approx(50.9951690 - 46.6805900, abs=1e-9)
    assert (conv.prompt_len[0], conv.output_len[0], conv.prompt_len[1], conv.output_len[1]) == (
        374,
        44,
        396,
        109,
    )
    kimi = load_trace("kimi-conv")
    assert (kimi.prompt_len[0], kimi.output_len[0]) == (6758, 500)
    assert kimi.arrival_s[-1] == 3536.999  # last timestamp 3,536,999 ms


@pytest.mark.parametrize("name", TRACES)
def test_loading_is_fast(name):
    start = time.perf_counter()
    load_trace.__wrapped__(name)  # bypass the cache
    assert time.perf_counter() - start < 0.5


def test_load_trace_is_cached_and_case_insensitive():
    assert load_trace("azure-code") is load_trace("azure-code")
    assert len(load_trace("Azure-Code")) == 8_819


def test_unknown_trace():
    with pytest.raises(
        UserInputError, match=r"unknown trace 'sharegpt'; valid: azure-conv, azure-code, kimi-conv"
    ):
        load_trace("sharegpt")


def test_head():
    trace = load_trace("azure-conv")
    head = trace.head(10)
    assert len(head) == 10 and head.name == trace.name
    np.testing.assert_array_equal(head.prompt_len, trace.prompt_len[:10])
    assert len(trace.head(10**9)) == len(trace)
    with pytest.raises(UserInputError):
        trace.head(-1)


def test_synthetic_fixed_lengths_saturate():
    trace = synthetic_trace(8, 1024, 128)
    assert len(trace) == 8
    assert np.all(trace.arrival_s == 0)
    assert np.all(trace.prompt_len == 1024) and np.all(trace.output_len == 128)


def test_synthetic_uniform_lengths_and_seed():
    trace = synthetic_trace(20_000, (100, 200), (1, 4), seed=3)
    assert trace.prompt_len.min() == 100 and trace.prompt_len.max() == 200  # both ends inclusive
    assert set(np.unique(trace.output_len)) == {1, 2, 3, 4}
    assert trace.prompt_len.mean() == pytest.approx(150, abs=1)
    again = synthetic_trace(20_000, (100, 200), (1, 4), seed=3)
    np.testing.assert_array_equal(trace.prompt_len, again.prompt_len)
    other = synthetic_trace(20_000, (100, 200), (1, 4), seed=4)
    assert not np.array_equal(trace.prompt_len, other.prompt_len)


def test_poisson_arrivals_statistics():
    rate_per_s = 5.0
    arrivals = poisson_arrivals(50_000, rate_per_s, seed=1)
    assert arrivals[0] == 0 and np.all(np.diff(arrivals) >= 0) and arrivals.dtype == np.float64
    gaps = np.diff(arrivals)
    # exponential gaps: mean 1/rate and standard deviation 1/rate (1% of 50k samples ~ 2 sigma)
    assert gaps.mean() == pytest.approx(1 / rate_per_s, rel=0.02)
    assert gaps.std() == pytest.approx(1 / rate_per_s, rel=0.03)
    np.testing.assert_array_equal(arrivals, poisson_arrivals(50_000, rate_per_s, seed=1))
    assert len(poisson_arrivals(0, 1.0)) == 0 and list(poisson_arrivals(1, 1.0)) == [0.0]
    trace = synthetic_trace(100, 10, 10, rate_per_s=rate_per_s, seed=1)
    np.testing.assert_array_equal(trace.arrival_s, poisson_arrivals(100, rate_per_s, seed=1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=0, prompt_len=1, output_len=1), "request count"),
        (dict(n=5, prompt_len=0, output_len=1), "prompt_len must satisfy"),
        (dict(n=5, prompt_len=(10, 5), output_len=1), "prompt_len must satisfy"),
        (dict(n=5, prompt_len=10, output_len="x"), "output_len must be an int"),
        (dict(n=5, prompt_len=10, output_len=1, rate_per_s=0), "arrival rate"),
        (dict(n=5, prompt_len=10, output_len=1, rate_per_s=float("inf")), "arrival rate"),
    ],
)
def test_synthetic_errors(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        synthetic_trace(**kwargs)


def test_trace_validation():
    from lamina_bench.catalog.workloads import Trace

    ok = dict(
        name="t", arrival_s=np.zeros(2), prompt_len=np.ones(2, np.int64), output_len=np.ones(2, np.int64)
    )
    Trace(**ok, source="s")
    for change, message in [
        ({"prompt_len": np.ones(3, np.int64)}, "length 2"),
        ({"arrival_s": np.array([1.0, 0.0])}, "non-decreasing"),
        ({"output_len": np.zeros(2, np.int64)}, ">= 1 token"),
        ({"prompt_len": np.ones(2)}, "int64"),
    ]:
        with pytest.raises(UserInputError, match=message):
            Trace(**(ok | change), source="s")
