"""Workloads: the real request traces of the Lamina evaluation, synthetic traces, arrival processes.

A trace is a list of requests, each with an arrival time (seconds from the first request), a prompt
length and a generated length (tokens). The shipped files (lamina_bench/data/traces/, attribution and
licenses in its README.md) are byte-identical copies of the public releases:
  azure-conv, azure-code: Azure/AzurePublicDataset AzureLLMInferenceTrace_{conv,code}.csv (CC-BY 4.0)
  kimi-conv: kvcache-ai/Mooncake FAST25-release/traces/conversation_trace.jsonl (Apache-2.0)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lamina_bench.errors import UserInputError

TRACES = ("azure-conv", "azure-code", "kimi-conv")
TRACE_DIR = Path(__file__).resolve().parents[1] / "data" / "traces"

_AZURE_SOURCE = (
    "Azure LLM inference trace 2023 ({kind}), Azure/AzurePublicDataset "
    "data/AzureLLMInferenceTrace_{kind}.csv (Splitwise, ISCA 2024); CC-BY 4.0"
)
_MOONCAKE_SOURCE = (
    "Kimi conversation trace, kvcache-ai/Mooncake FAST25-release/traces/conversation_trace.jsonl "
    "(Mooncake, FAST 2025); Apache-2.0"
)
_FILES = {
    "azure-conv": "azure_conv_2023.csv",
    "azure-code": "azure_code_2023.csv",
    "kimi-conv": "mooncake_conversation.jsonl",
}


@dataclass(frozen=True, eq=False)
class Trace:
    """Requests in arrival order: arrival_s (float64, from 0, non-decreasing), lengths (int64 tokens)."""

    name: str
    arrival_s: np.ndarray  # (n,) float64, seconds since the first request
    prompt_len: np.ndarray  # (n,) int64, prompt tokens (>= 1)
    output_len: np.ndarray  # (n,) int64, generated tokens (>= 1)
    source: str  # attribution line

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for field in ("arrival_s", "prompt_len", "output_len"):
            array = getattr(self, field)
            if not isinstance(array, np.ndarray) or array.ndim != 1 or len(array) != n:
                raise UserInputError(f"trace {self.name}: {field} must be a 1-D array of length {n}")
        if self.arrival_s.dtype != np.float64 or self.prompt_len.dtype != np.int64:
            raise UserInputError(f"trace {self.name}: arrival_s must be float64 and lengths int64")
        if self.output_len.dtype != np.int64:
            raise UserInputError(f"trace {self.name}: output_len must be int64")
        if n and (self.arrival_s[0] < 0 or np.any(np.diff(self.arrival_s) < 0)):
            raise UserInputError(f"trace {self.name}: arrival_s must be non-negative and non-decreasing")
        if n and (self.prompt_len.min() < 1 or self.output_len.min() < 1):
            raise UserInputError(f"trace {self.name}: prompt and output lengths must be >= 1 token")

    def __len__(self) -> int:
        return len(self.arrival_s)

    def head(self, n: int) -> Trace:
        """The first `n` requests (all of them if the trace is shorter)."""
        if n < 0:
            raise UserInputError(f"head(n) needs n >= 0, got {n}")
        return Trace(self.name, self.arrival_s[:n], self.prompt_len[:n], self.output_len[:n], self.source)


def _from_frame(name: str, arrival_s: np.ndarray, prompt: pd.Series, output: pd.Series, source: str) -> Trace:
    """A Trace sorted by arrival (stable) and rebased so the first request arrives at 0."""
    order = np.argsort(arrival_s, kind="stable")
    arrival_s = arrival_s[order]
    arrays = (arrival_s - arrival_s[0], prompt.to_numpy(np.int64)[order], output.to_numpy(np.int64)[order])
    for array in arrays:
        array.setflags(write=False)  # load_trace hands one cached Trace to every caller
    return Trace(name, *arrays, source)


def _load_azure(name: str, path: Path) -> Trace:
    """Azure CSV: TIMESTAMP (wall clock, 100 ns digits), ContextTokens, GeneratedTokens."""
    frame = pd.read_csv(path, dtype={"ContextTokens": np.int64, "GeneratedTokens": np.int64})
    stamps = pd.to_datetime(frame["TIMESTAMP"], format="%Y-%m-%d %H:%M:%S.%f")
    arrival_s = (stamps - stamps.min()).dt.total_seconds().to_numpy(np.float64)
    kind = name.split("-")[1]
    source = _AZURE_SOURCE.format(kind=kind)
    return _from_frame(name, arrival_s, frame["ContextTokens"], frame["GeneratedTokens"], source)


def _load_mooncake(name: str, path: Path) -> Trace:
    """Mooncake JSONL: timestamp (ms from trace start), input_length, output_length (hash_ids unused)."""
    frame = pd.read_json(path, lines=True, dtype={"timestamp": np.int64})
    arrival_s = frame["timestamp"].to_numpy(np.float64) / 1000.0
    return _from_frame(name, arrival_s, frame["input_length"], frame["output_length"], _MOONCAKE_SOURCE)


@functools.cache
def load_trace(name: str) -> Trace:
    """One of TRACES, read from the shipped files (cached; the arrays are read-only)."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _FILES:
        raise UserInputError(f"unknown trace {name!r}; valid: {', '.join(TRACES)}")
    path = TRACE_DIR / _FILES[key]
    if not path.is_file():
        raise UserInputError(f"trace file {path} is missing; reinstall lamina-bench")
    loader = _load_mooncake if path.suffix == ".jsonl" else _load_azure
    return loader(key, path)


# ---- synthetic workloads ----------------------------------------------------------------------------


def poisson_arrivals(n: int, rate_per_s: float, seed: int = 0) -> np.ndarray:
    """Arrival times (s) of a Poisson process at `rate_per_s`: the first at 0, exponential gaps."""
    if n < 0:
        raise UserInputError(f"request count must be >= 0, got {n}")
    if not rate_per_s > 0 or not np.isfinite(rate_per_s):
        raise UserInputError(f"arrival rate must be a positive finite number of requests/s, got {rate_per_s}")
    if seed < 0:
        raise UserInputError(f"seed must be >= 0, got {seed}")
    with np.errstate(over="ignore", divide="ignore"):
        gaps_s = np.random.default_rng(seed).exponential(1.0 / rate_per_s, size=max(n - 1, 0))
        arrival_s = np.concatenate([np.zeros(min(n, 1)), np.cumsum(gaps_s)]).astype(np.float64)
    if not np.isfinite(arrival_s).all():
        raise UserInputError(
            f"arrival rate {rate_per_s:g} requests/s is too small: the arrival times of {n} requests "
            "overflow; give a larger rate"
        )
    return arrival_s


def check_request_count(requests: int, trace: Trace) -> None:
    """UserInputError unless the first `requests` requests exist in `trace` (never silently fewer)."""
    if requests > len(trace):
        raise UserInputError(
            f"--requests {requests} exceeds the {len(trace)} requests of trace {trace.name}; "
            f"give at most {len(trace)} (or leave it out for the whole trace)"
        )


def _lengths(what: str, spec: int | tuple[int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` token counts: a fixed int, or uniform integers in [lo, hi] (both inclusive)."""
    if isinstance(spec, int | np.integer) and not isinstance(spec, bool):
        lo = hi = int(spec)
    elif isinstance(spec, tuple | list) and len(spec) == 2:
        lo, hi = (int(v) for v in spec)
    else:
        raise UserInputError(f"{what} must be an int or a (lo, hi) pair, got {spec!r}")
    if lo < 1 or hi < lo:
        raise UserInputError(f"{what} must satisfy 1 <= lo <= hi, got {spec!r}")
    if lo == hi:
        return np.full(n, lo, dtype=np.int64)
    return rng.integers(lo, hi, size=n, endpoint=True, dtype=np.int64)


def synthetic_trace(
    n: int,
    prompt_len: int | tuple[int, int],
    output_len: int | tuple[int, int],
    rate_per_s: float | None = None,
    seed: int = 0,
) -> Trace:
    """`n` requests with fixed or uniform (lo, hi) lengths.

    Arrivals are all 0 (a saturating batch) when `rate_per_s` is None, else Poisson at that rate.
    The same seed gives the same trace.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise UserInputError(f"request count must be a positive int, got {n!r}")
    rng = np.random.default_rng(seed)
    prompts = _lengths("prompt_len", prompt_len, n, rng)
    outputs = _lengths("output_len", output_len, n, rng)
    if rate_per_s is None:
        arrival_s, arrivals = np.zeros(n, dtype=np.float64), "saturate"
    else:
        arrival_s, arrivals = poisson_arrivals(n, rate_per_s, seed), f"poisson {rate_per_s:g}/s"
    name = f"synthetic(n={n},prompt={prompt_len},output={output_len},arrivals={arrivals})"
    source = f"synthetic: uniform lengths, {arrivals} arrivals, seed={seed}"
    return Trace(name.replace(" ", ""), arrival_s, prompts, outputs, source)
