"""Modeled sweep grids: homogeneous device x TP, Lamina compute x memory x counts x depth, a batch-cap
axis per configuration, one price set; combinations that cannot run are skipped and counted; bad axes and
prices fail with one line naming the valid choices."""

import itertools
import tomllib

import pytest

from lamina_bench.catalog.devices import load_catalog, parse_mix
from lamina_bench.catalog.models import get_model
from lamina_bench.catalog.prices import DEFAULT_PRICE_SET, get_price_set
from lamina_bench.errors import UserInputError
from lamina_bench.model.system import SystemConfig, memory_plan
from lamina_bench.sweep.spec import DEFAULT_SPEC, load_spec, parse_spec
from tests.lamina_bench.compare_helpers import cli

GRID = """
name = "grid"
[[modeled]]
models = ["llama3-70b", "llama3-8b"]
traces = ["azure-conv", "kimi-conv"]
requests = 50
homogeneous_devices = ["H100", "B200"]
tp = [1, 2, 8]
lamina_compute = ["H200"]
lamina_attention = ["L40S", "A100-80G"]
compute_counts = [1, 2]
attention_counts = [2, 16]
lamina_pipeline_batches = [2]
batch_caps = [16, 0]
slo_ms = [100]
"""


def _runs(model: str, system: str, compute: str, attention: str | None) -> bool:
    catalog = load_catalog(prices=DEFAULT_PRICE_SET)
    try:
        memory_plan(SystemConfig(system, get_model(model), parse_mix(compute, catalog),
                                 parse_mix(attention, catalog) if attention else None, "fp16",
                                 pipeline_batches=2 if attention else None))  # fmt: skip
    except UserInputError:
        return False
    return True


def test_grid_expands_every_runnable_combination_once_per_trace_and_cap():
    spec = parse_spec(tomllib.loads(GRID))
    mixes = [("homogeneous", f"{tp}x{d}", None) for d, tp in itertools.product(["H100", "B200"], [1, 2, 8])]
    mixes += [
        ("lamina", f"{nc}xH200", f"{na}x{a}")
        for a, nc, na in itertools.product(["L40S", "A100-80G"], [1, 2], [2, 16])
    ]
    combos = [(m, *mix) for m in ("llama3-70b", "llama3-8b") for mix in mixes]
    runnable = [c for c in combos if _runs(*c)]
    assert 0 < len(runnable) < len(combos)  # the grid holds both kinds
    per_combo = 2 * 2  # traces x batch caps
    assert len(spec.points) == len(runnable) * per_combo
    assert spec.skipped == (len(combos) - len(runnable)) * per_combo
    got = {(p.config.model, p.config.system, p.config.compute, p.config.attention) for p in spec.points}
    assert got == set(runnable)
    assert ("llama3-70b", "homogeneous", "1xH100", None) not in got  # 140 GB of weights on one 80 GB card
    assert ("llama3-70b", "homogeneous", "8xH100", None) in got
    assert ("llama3-8b", "lamina", "1xH200", "16xL40S") not in got  # more attention devices than KV heads
    assert {p.config.max_batch for p in spec.points} == {16, 0}
    assert {p.config.prices for p in spec.points} == {DEFAULT_PRICE_SET}
    assert len({p.point_id for p in spec.points}) == len(spec.points)


def test_default_sweep_covers_the_paper_pairs_and_the_mixes_on_one_price_set():
    spec = load_spec(DEFAULT_SPEC)
    modeled = [p.config for p in spec.points if p.kind == "modeled"]
    assert len(modeled) >= 300
    grid = [c for c in modeled if c.prices == DEFAULT_PRICE_SET]
    priced = set(get_price_set(DEFAULT_PRICE_SET).prices)
    compute = {c.compute.split("x", 1)[1] for c in grid}
    memory = {c.attention.split("x", 1)[1] for c in grid if c.attention}
    assert {"H100", "H200", "B200", "A100-80G"} <= compute <= priced
    assert memory and memory <= priced
    assert {c.trace for c in grid} == {"azure-conv", "azure-code", "kimi-conv"}
    assert len({c.max_batch for c in grid}) >= 3  # every configuration is a curve


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            ("batch_caps = [16, 0]", "batch_caps = []"),
            "'batch_caps' is empty; give at least one (valid: integers >= 0",
        ),
        (("tp = [1, 2, 8]", "tp = []"), "'tp' is empty; give at least one (valid: positive integers)"),
        (
            ('homogeneous_devices = ["H100", "B200"]', "homogeneous_devices = []"),
            "'homogeneous_devices' is empty; give at least one (valid: H100, H200, B200",
        ),
        (
            ('traces = ["azure-conv", "kimi-conv"]', "traces = []"),
            "(valid: azure-conv, azure-code, kimi-conv",
        ),
        (("batch_caps = [16, 0]", "batch_caps = [-1]"), "'batch_caps' entries must be integers >= 0"),
        (("slo_ms = [100]", "slo_ms = [0]"), "'slo_ms' entries must be positive numbers"),
        (
            ('name = "grid"', 'name = "grid"\n[[modeled]]\nmodels = ["llama3-8b"]\nprices = "nope"'),
            "[[modeled]] #1: unknown price set 'nope'; valid: coreweave-ondemand-2026-09-20",
        ),  # fmt: skip
        (
            ('lamina_attention = ["L40S", "A100-80G"]', 'lamina_attention = ["L40S", "H20"]'),
            "H20 has no price in price set coreweave-ondemand-2026-09-20",
        ),
    ],
)
def test_bad_axes_and_prices_fail_with_one_line_naming_the_valid_choices(edit, message):
    old, new = edit
    assert old in GRID
    with pytest.raises(UserInputError) as info:
        parse_spec(tomllib.loads(GRID.replace(old, new, 1)))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_exits_2_and_writes_nothing(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(GRID.replace("tp = [1, 2, 8]", "tp = []"))
    code, _, err = cli(capsys, "run", str(spec), "--out", str(tmp_path / "out"), "--no-report")
    assert code == 2 and "'tp' is empty" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    code, _, err = cli(
        capsys,
        "search",
        "--model",
        "llama3-70b",
        "--trace",
        "azure-conv",
        "--devices",
        "H20",
        "--prices",
        DEFAULT_PRICE_SET,
    )
    assert code == 2 and "H20 has no price in price set" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "hardware", "--prices", "nope")
    assert code == 2 and "unknown price set 'nope'; valid:" in err
