"""Sweep specs: TOML -> validated points -> measured or modeled execution, resumable and shardable.

A spec holds `[[measured]]` blocks (run the reference implementation on the local device) and
`[[modeled]]` blocks (performance model + trace simulator). Every list-valued knob of a block is
expanded as a product; each combination is one point, identified by `point_id` (a hash of its
configuration, so resume, shard and compare match points across runs). Example:

    name = "example"
    repeats = 3                       # measured repeats per point -> median and CI (results.median_ci95)

    [[measured]]
    model = "bench-llama-gqa"         # a bench model (random weights, built here) or a HF folder
    systems = ["homogeneous", "lamina"]
    batch_sizes = [1, 4, 16]
    context_lens = [128]              # prompt tokens per request
    new_tokens = 16                   # decode steps measured per request
    pipeline_batches = [1, 2]         # lamina only: 1 = no overlap, 2 = ping-pong
    predict = true                    # also model each point from the local profile (model error)

    [[modeled]]
    models = ["llama-33b"]
    traces = ["azure-conv"]
    systems = ["homogeneous", "lamina"]
    homogeneous = ["2xH100"]          # mixes for the baseline
    lamina = [{ compute = "1xH100", attention = "2xH20", pipeline_batches = 2 }]

Unknown keys, unknown names and impossible mixes fail before any work with a one-line error.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lamina_bench.errors import UserInputError
from lamina_bench.results import point_id
from lamina_bench.simulate import ARRIVALS, SYSTEMS

# key -> (type, default); list-valued keys are expanded. A key given as a scalar is a one-element list.
_MEASURED_KEYS: dict[str, tuple[type, Any]] = {
    "model": (str, None),
    "systems": (list, ["homogeneous", "lamina"]),
    "batch_sizes": (list, [1, 4]),
    "context_lens": (list, [64]),
    "new_tokens": (int, 16),
    "device": (str, "cpu"),
    "dtype": (str, "fp32"),
    "tp": (int, 1),
    "compute_workers": (int, 1),
    "attention_workers": (int, 1),
    "pipeline_batches": (list, [1]),
    "predict": (bool, True),
}
_MODELED_KEYS: dict[str, tuple[type, Any]] = {
    "models": (list, None),
    "traces": (list, ["azure-conv"]),
    "systems": (list, ["homogeneous", "lamina"]),
    "homogeneous": (list, []),
    "lamina": (list, []),
    "requests": (int, 0),  # 0 = the whole trace
    "arrival": (str, "saturate"),
    "rate_per_s": (float, 0.0),
    "dtype": (str, "fp16"),
}
_LAMINA_MIX_KEYS = ("compute", "attention", "pipeline_batches")
_TOP_KEYS = ("name", "repeats", "measured", "modeled")


@dataclass(frozen=True)
class Point:
    """One configuration to run. `config` holds only JSON scalars, so it hashes and stores as is."""

    mode: str  # "measured" | "modeled"
    config: Mapping[str, Any]
    point_id: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "point_id", point_id({"mode": self.mode, **self.config}))

    def label(self) -> str:
        c = self.config
        mix = c.get("compute", "") + (f"+{c['attention']}" if c.get("attention") else "")
        knobs = [c.get("model"), c.get("system"), mix, c.get("trace")]
        if "batch_size" in c:
            knobs += [f"B={c['batch_size']}", f"ctx={c['context_len']}"]
        if c.get("system") == "lamina":
            knobs.append(f"n={c['pipeline_batches']}")
        return f"{self.mode}:" + " ".join(str(k) for k in knobs if k)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    repeats: int
    points: tuple[Point, ...]
    raw: Mapping[str, Any]  # the parsed TOML, stored in the manifest


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"sweep spec {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"sweep spec {path}: not valid TOML ({exc})") from None
    return parse_spec(raw, origin=str(path))


def parse_spec(raw: Mapping[str, Any], origin: str = "spec") -> SweepSpec:
    _check_keys(raw, _TOP_KEYS, origin)
    repeats = raw.get("repeats", 1)
    if not isinstance(repeats, int) or repeats < 1:
        raise UserInputError(f"{origin}: repeats must be a positive integer, got {repeats!r}")
    points: list[Point] = []
    for i, block in enumerate(_blocks(raw, "measured", origin)):
        points += _measured_points(_with_defaults(block, _MEASURED_KEYS, f"{origin}: [[measured]] #{i + 1}"))
    for i, block in enumerate(_blocks(raw, "modeled", origin)):
        points += _modeled_points(_with_defaults(block, _MODELED_KEYS, f"{origin}: [[modeled]] #{i + 1}"))
    if not points:
        raise UserInputError(f"{origin}: no points; add a [[measured]] or [[modeled]] block")
    seen: dict[str, Point] = {}
    for p in points:
        seen.setdefault(p.point_id, p)  # the same point listed twice runs once
    return SweepSpec(
        name=str(raw.get("name", "sweep")), repeats=repeats, points=tuple(seen.values()), raw=raw
    )


def shard(points: Iterable[Point], index: int, count: int) -> list[Point]:
    """Points of shard `index` (1-based) of `count`: round robin in spec order, so shards are balanced."""
    if count < 1 or not 1 <= index <= count:
        raise UserInputError(f"--shard must be I/N with 1 <= I <= N, got {index}/{count}")
    return [p for i, p in enumerate(points) if i % count == index - 1]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserInputError(f"--shard must look like I/N (e.g. 1/2), got {text!r}") from None
    shard([], index, count)  # validates
    return index, count


# ---- expansion ------------------------------------------------------------------------------------


def _blocks(raw: Mapping[str, Any], key: str, origin: str) -> list[Mapping[str, Any]]:
    blocks = raw.get(key, [])
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise UserInputError(f"{origin}: '{key}' must be an array of tables ([[{key}]])")
    return blocks


def _check_keys(table: Mapping[str, Any], valid: Iterable[str], where: str) -> None:
    valid = tuple(valid)
    for key in table:
        if key not in valid:
            raise UserInputError(f"{where}: unknown key '{key}'; valid: {', '.join(valid)}")


def _with_defaults(block: Mapping[str, Any], schema: Mapping[str, tuple[type, Any]], where: str) -> dict:
    _check_keys(block, schema, where)
    out: dict[str, Any] = {"_where": where}
    for key, (kind, default) in schema.items():
        value = block.get(key, default)
        if value is None:
            raise UserInputError(f"{where}: '{key}' is required")
        if kind is list and not isinstance(value, list):
            value = [value]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserInputError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
        if kind is list and not value and key not in ("homogeneous", "lamina"):
            raise UserInputError(f"{where}: '{key}' must not be empty")
        out[key] = value
    return out


def _check_systems(systems: list, where: str) -> None:
    for s in systems:
        if s not in SYSTEMS:
            raise UserInputError(f"{where}: unknown system {s!r}; valid: {', '.join(SYSTEMS)}")


def _positive_ints(values: list, key: str, where: str) -> None:
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise UserInputError(f"{where}: '{key}' entries must be positive integers, got {v!r}")


def _measured_points(b: dict) -> list[Point]:
    from lamina_bench.benchmodels import resolve_local_model

    where = b["_where"]
    _check_systems(b["systems"], where)
    for key in ("batch_sizes", "context_lens", "pipeline_batches"):
        _positive_ints(b[key], key, where)
    for key in ("new_tokens", "tp", "compute_workers", "attention_workers"):
        _positive_ints([b[key]], key, where)
    if b["new_tokens"] < 2:
        raise UserInputError(
            f"{where}: new_tokens must be >= 2 (the first comes from the prefill; decode is measured)"
        )
    if b["device"] not in ("cpu", "cuda"):
        raise UserInputError(f"{where}: device must be cpu or cuda, got {b['device']!r}")
    if b["dtype"] not in ("fp32", "fp16", "bf16"):
        raise UserInputError(f"{where}: dtype must be fp32, fp16 or bf16, got {b['dtype']!r}")
    model = resolve_local_model(b["model"], where)
    points = []
    for system, batch, ctx in itertools.product(b["systems"], b["batch_sizes"], b["context_lens"]):
        depths = b["pipeline_batches"] if system == "lamina" else [1]
        for depth in depths:
            if system == "lamina":
                _check_lamina_layout(b["compute_workers"], b["attention_workers"], depth, where)
            config = {
                "model": model,
                "system": system,
                "device": b["device"],
                "dtype": b["dtype"],
                "batch_size": batch,
                "context_len": ctx,
                "new_tokens": b["new_tokens"],
                "tp": b["tp"],
                "compute": f"{b['compute_workers'] if system == 'lamina' else b['tp']}x{b['device']}",
                "attention": f"{b['attention_workers']}x{b['device']}" if system == "lamina" else "",
                "pipeline_batches": depth,
            }
            points.append(Point("measured", config))
            if b["predict"]:
                points.append(Point("modeled", {**config, "predicts": "measured"}))
    return points


def _check_lamina_layout(compute: int, attention: int, depth: int, where: str) -> None:
    """The runtime's own rule for worker counts and pipeline depth, checked before any work."""
    from reference_impl.errors import ConfigError
    from reference_impl.workers import Layout

    try:
        Layout(compute, attention, depth)
    except ConfigError as exc:
        raise UserInputError(f"{where}: {exc}") from None


def _system_config(c: Mapping[str, Any]):
    """The simulator's SystemConfig of a modeled point's configuration."""
    from lamina_bench.hardware import parse_mix
    from lamina_bench.models import get_model
    from lamina_bench.simulate import SystemConfig

    return SystemConfig(
        system=c["system"],
        model=get_model(c["model"]),
        compute=parse_mix(c["compute"]),
        attention=parse_mix(c["attention"]) if c["attention"] else None,
        dtype=c["dtype"],
        pipeline_batches=c["pipeline_batches"] if c["system"] == "lamina" else None,
    )


def _modeled_points(b: dict) -> list[Point]:
    from lamina_bench.hardware import parse_mix
    from lamina_bench.models import get_model
    from lamina_bench.simulate import memory_plan
    from lamina_bench.workloads import TRACES

    where = b["_where"]
    _check_systems(b["systems"], where)
    for m in b["models"]:
        get_model(m)  # UserInputError naming the valid models
    for t in b["traces"]:
        if t not in TRACES:
            raise UserInputError(f"{where}: unknown trace {t!r}; valid: {', '.join(TRACES)}")
    if b["arrival"] not in ARRIVALS:
        raise UserInputError(f"{where}: unknown arrival {b['arrival']!r}; valid: {', '.join(ARRIVALS)}")
    if b["arrival"] == "poisson" and b["rate_per_s"] <= 0:
        raise UserInputError(f"{where}: arrival = 'poisson' needs rate_per_s > 0")
    mixes = []
    if "homogeneous" in b["systems"]:
        if not b["homogeneous"]:
            raise UserInputError(
                f"{where}: system 'homogeneous' needs a 'homogeneous' list of mixes, e.g. [\"4xH100\"]"
            )
        mixes += [("homogeneous", str(parse_mix(m)), "", 1) for m in b["homogeneous"]]
    if "lamina" in b["systems"]:
        if not b["lamina"]:
            raise UserInputError(
                f"{where}: system 'lamina' needs a 'lamina' list like [{{compute = \"1xH100\", attention = \"2xH20\"}}]"
            )
        for mix in b["lamina"]:
            if not isinstance(mix, dict):
                raise UserInputError(f"{where}: 'lamina' entries must be tables, got {mix!r}")
            _check_keys(mix, _LAMINA_MIX_KEYS, f"{where}: lamina mix")
            if "compute" not in mix or "attention" not in mix:
                raise UserInputError(f"{where}: a lamina mix needs 'compute' and 'attention', got {mix!r}")
            depth = mix.get("pipeline_batches", 2)
            _positive_ints([depth], "pipeline_batches", where)
            mixes.append(("lamina", str(parse_mix(mix["compute"])), str(parse_mix(mix["attention"])), depth))
    points = []
    for model, trace, (system, compute, attention, depth) in itertools.product(
        b["models"], b["traces"], mixes
    ):
        config = {
            "model": model,
            "system": system,
            "trace": trace,
            "compute": compute,
            "attention": attention,
            "pipeline_batches": depth,
            "requests": b["requests"],
            "arrival": b["arrival"],
            "rate_per_s": b["rate_per_s"],
            "dtype": b["dtype"],
        }
        memory_plan(_system_config(config))  # weights that do not fit: UserInputError before any work
        points.append(Point("modeled", config))
    return points


# ---- execution ------------------------------------------------------------------------------------

_ROW_CONFIG = ("model", "system", "compute", "attention", "trace", "batch_size", "context_len",
               "pipeline_batches", "dtype", "requests")  # fmt: skip


@dataclass(frozen=True)
class SweepOutcome:
    run_dir: Path
    ran: int
    skipped: int  # already finished (resume)
    failed: int
    wall_s: float


class Progress:
    """One status line per finished point with percent done and ETA (from the mean time per point)."""

    def __init__(self, total: int, stream=None):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.stream = stream if stream is not None else sys.stderr

    def update(self, label: str, status: str, wall_s: float) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta_s = elapsed / self.done * (self.total - self.done)
        print(
            f"[{self.done:>{len(str(self.total))}}/{self.total}] {100 * self.done / self.total:3.0f}% "
            f"ETA {int(eta_s) // 60}:{int(eta_s) % 60:02d}  {label}  {status} ({wall_s:.1f} s)",
            file=self.stream,
            flush=True,
        )


@dataclass
class _Context:
    """State shared by the points of one sweep: local profiles (taken on first need) and telemetry."""

    store: Any
    spec_path: str
    profiles: dict = field(default_factory=dict)  # (model, device, dtype) -> Profile
    sampler: Any = None

    def local_profile(self, config: Mapping[str, Any]):
        """A profile of this machine for the point's model, device and dtype (written into the run)."""
        key = (config["model"], config["device"], config["dtype"])
        if key not in self.profiles:
            from lamina_bench.perfmodel import write_profile
            from lamina_bench.profile import ProfileSettings, profile_device

            print(
                f"profiling {key[1]} ({key[0]}, {key[2]}) for the model's predictions ...",
                file=sys.stderr,
                flush=True,
            )
            profile = profile_device(ProfileSettings(model=key[0], device=key[1], dtype=key[2]))
            write_profile(
                profile, self.store.path / f"profile-{profile.name}-{Path(key[0]).name}-{key[2]}.json"
            )
            self.profiles[key] = profile
        return self.profiles[key]


def _base_row(point: Point, repro: str) -> dict[str, Any]:
    c = point.config
    row = {k: c[k] for k in _ROW_CONFIG if k in c and c[k] != ""}
    extra = {k: v for k, v in c.items() if k not in _ROW_CONFIG}
    row.update(point_id=point.point_id, repro_command=repro, extra_json=json.dumps(extra, sort_keys=True))
    return row


def _failed(row: dict[str, Any], source: str, exc: BaseException) -> dict[str, Any]:
    message = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
    return {**row, "source": source, "status": "failed", "error": message}


def _modeled_row(point: Point, ctx: _Context) -> dict[str, Any]:
    from lamina_bench.cost import usd_per_mtok
    from lamina_bench.simulate import simulate
    from lamina_bench.workloads import load_trace

    c = point.config
    config = _system_config(c)
    r = simulate(config, load_trace(c["trace"]), arrival=c["arrival"], rate_per_s=c["rate_per_s"] or None,
                 requests=c["requests"] or None)  # fmt: skip
    metrics = {k: getattr(r, k) for k in ("throughput_tok_per_s", "generated_tokens", "tbt_p50_ms", "tbt_p90_ms",
               "tbt_p99_ms", "tbt_mean_ms", "mean_batch_size", "max_batch_size", "cost_usd_per_hour",
               "tokens_per_usd", "usd_per_mtok", "net_bytes_per_token", "net_peak_gbps")}  # fmt: skip
    extra = {"pools": _modeled_pools(r), "rejected_requests": r.rejected_requests}
    if r.saturated_throughput_tok_per_s is not None:
        # saturate mode: like `simulate --paper`, report the phase where requests still queue (the steady
        # state), not the drain after the last admission; keep the whole-trace figures next to it
        extra.update(throughput_basis="saturated phase", whole_trace={k: metrics[k] for k in
                     ("throughput_tok_per_s", "mean_batch_size", "tokens_per_usd", "usd_per_mtok")})  # fmt: skip
        metrics.update(throughput_tok_per_s=r.saturated_throughput_tok_per_s,
                       mean_batch_size=r.saturated_mean_batch_size, tokens_per_usd=r.saturated_tokens_per_usd,
                       usd_per_mtok=usd_per_mtok(r.saturated_throughput_tok_per_s, r.cost_usd_per_hour))  # fmt: skip
    compute, attention = extra["pools"]["compute"], extra["pools"].get("attention", {})
    metrics.update(dense_ms=compute["dense_ms"], attention_ms=attention.get("attention_ms", compute.get("attention_ms")),
                   network_ms=r.network_mean_ms * r.pipeline_batches if r.system == "lamina" else None,
                   idle_ms=compute["idle_ms"])  # fmt: skip
    return {"source": r.source, "profile": r.profile, "status": "ok", "requests": r.requests, "_extra": extra,
            **metrics}  # fmt: skip


def _modeled_pools(r) -> dict[str, dict[str, float]]:
    """Per-pool time per decode iteration (ms, mean over the replay) for the report's stacked bars."""
    it = r.iteration_mean_ms
    if r.system == "homogeneous":  # dense and attention one after the other on the same devices
        idle = it - r.dense_mean_ms - r.attention_mean_ms
        return {
            "compute": {"dense_ms": r.dense_mean_ms, "attention_ms": r.attention_mean_ms, "idle_ms": idle}
        }
    # the link overlaps with both pools' work (pipelining), so it is not stacked; it is the network_ms column
    return {
        "compute": {"dense_ms": r.compute_busy_mean_ms, "idle_ms": it - r.compute_busy_mean_ms},
        "attention": {"attention_ms": r.attention_busy_mean_ms, "idle_ms": it - r.attention_busy_mean_ms},
    }  # fmt: skip


def _measured_rows(point: Point, repeats: int) -> tuple[list[dict[str, Any]], dict | None]:
    """One row per repeat (a failing repeat is a failed row), and the first ok repeat's pool breakdown."""
    from lamina_bench.measure import run_measured

    rows, pools = [], None
    for i in range(repeats):
        try:
            timings = run_measured(point.config)
        except Exception as exc:  # noqa: BLE001 - a failing repeat is recorded, not raised
            rows.append(_failed({"repeat": i}, "measured", exc))
            continue
        rows.append({"source": "measured", "status": "ok", "repeat": i, **timings.metrics()})
        pools = pools or timings.breakdown_ms
    return rows, pools


def _execute(point: Point, ctx: _Context, repeats: int) -> dict[str, Any]:
    """The row of one point; failures become a failed row with the error, never an exception."""
    base = _base_row(point, _repro(point, ctx.spec_path))
    source = "measured" if point.mode == "measured" else "modeled"
    if "predicts" in point.config:  # link the prediction to its measured point (also when it fails)
        measured = Point("measured", {k: v for k, v in point.config.items() if k != "predicts"})
        base["extra_json"] = json.dumps({**json.loads(base["extra_json"]), "predicts": measured.point_id})
    try:
        if point.mode == "measured":
            with ctx.sampler.window(point.point_id):
                repeat_rows, pools = _measured_rows(point, repeats)
            rows = [{**base, **r} for r in repeat_rows]
            from lamina_bench.results import aggregate_repeats
            from lamina_bench.telemetry import combine_summaries

            row = (
                aggregate_repeats(rows, point.point_id)
                if repeats > 1
                else {**rows[0], "repeat": None, "repeats": 1}
            )
            extra = {**json.loads(base["extra_json"]), **json.loads(row.get("extra_json") or "{}")}
            if pools:
                extra["pools"] = pools
            row["extra_json"] = json.dumps(extra, sort_keys=True)
            row.update(combine_summaries(ctx.sampler.window_summary(point.point_id)))
            return row
        if "predicts" in point.config:
            from lamina_bench.measure import predict_measured

            pred = predict_measured(point.config, ctx.local_profile(point.config))
            return {**base, "source": "modeled", "status": "ok", **pred}
        row = {**base, **_modeled_row(point, ctx)}
        extra = {**json.loads(base["extra_json"]), **row.pop("_extra")}
        return {**row, "extra_json": json.dumps(extra, sort_keys=True)}
    except Exception as exc:  # noqa: BLE001 - a failed point is a row, and the sweep goes on
        return _failed(base, source, exc)


def _repro(point: Point, spec_path: str) -> str:
    c = point.config
    if point.mode == "modeled" and "trace" in c:
        cmd = (f"lamina-bench simulate --model {c['model']} --system {c['system']} --compute {c['compute']} "
               f"--trace {c['trace']} --arrival {c['arrival']} --dtype {c['dtype']}")  # fmt: skip
        if c["attention"]:
            cmd += f" --attention {c['attention']} --pipeline-batches {c['pipeline_batches']}"
        if c["requests"]:
            cmd += f" --requests {c['requests']}"
        if c["arrival"] == "poisson":
            cmd += f" --rate {c['rate_per_s']}"
        return cmd
    return f"lamina-bench run {spec_path} --point {point.point_id}"


def _flush_telemetry(store, sampler, written: int) -> int:
    """Persist the samples taken since the last flush; returns how many are persisted in all."""
    samples = sampler.samples()
    if len(samples) > written:
        store.add_telemetry(samples[written:])
    return len(samples)


def run_sweep(spec: SweepSpec, store, points: list[Point], spec_path: str = "<default>",
              progress=None) -> SweepOutcome:  # fmt: skip
    """Run every point not yet in `store` (resume), persisting each row the moment it finishes."""
    from lamina_bench.telemetry import TelemetrySampler

    start = time.perf_counter()
    finished = store.finished_point_ids(include_failed=False)  # failed points run again on --resume
    stored = store.finished_point_ids()
    todo = [p for p in points if p.point_id not in finished]
    # predictions first: the local profile is taken at the start, before the measured points start
    # worker processes (the order is recorded by the row timestamps)
    todo.sort(key=lambda p: "predicts" not in p.config)
    progress = progress or Progress(len(todo))
    ctx = _Context(store=store, spec_path=spec_path)
    failed = written = 0
    with TelemetrySampler() as sampler:
        ctx.sampler = sampler
        for point in todo:
            t0 = time.perf_counter()
            row = _execute(point, ctx, spec.repeats)
            row["wall_s"] = time.perf_counter() - t0
            store.add_point(row, replace=point.point_id in stored)
            written = _flush_telemetry(store, sampler, written)  # a crash loses at most this point's samples
            failed += row["status"] == "failed"
            progress.update(point.label(), row["status"] if row["status"] == "ok" else f"FAILED: {row['error']}",
                            row["wall_s"])  # fmt: skip
        _flush_telemetry(store, sampler, written)
    return SweepOutcome(store.path, len(todo), len(points) - len(todo), failed, time.perf_counter() - start)


DEFAULT_SPEC = Path(__file__).parent / "data" / "default_sweep.toml"
QUICK_SPEC = Path(__file__).parent / "data" / "quick_sweep.toml"


def manifest_spec(
    spec: SweepSpec, spec_path: str, shard_text: str | None, point: str | None = None
) -> dict[str, Any]:
    """What the manifest records of the sweep; `--resume` looks for a run with the same record."""
    return {"path": spec_path, "shard": shard_text, "point": point, "repeats": spec.repeats, "toml": spec.raw}


def find_resumable(out_root: Path, record: dict[str, Any]) -> Path | None:
    """The newest run folder under `out_root` made by the same spec and shard and not finished."""
    candidates = []
    for manifest in out_root.glob("*/manifest.json"):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (
            data.get("spec") == json.loads(json.dumps(record, default=str))
            and data.get("status") != "finished"
        ):
            candidates.append((data.get("start_time") or "", manifest.parent))
    return max(candidates)[1] if candidates else None
