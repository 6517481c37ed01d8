"""`lamina-bench profile import --format vidur`: CSV files written here in Vidur's layout come back as the
profile points they encode."""

import pandas as pd
import pytest

from lamina_bench.catalog.devices import get_device
from lamina_bench.catalog.models import get_model, same_layer_shape
from lamina_bench.cli import main
from lamina_bench.model.operators import DeviceModel
from lamina_bench.model.ops.layer import LAYER_OPS
from lamina_bench.model.profiles import load_profile
from lamina_bench.validate.vidur import import_vidur

OPS = ("emb", *LAYER_OPS)
STATS = ("min", "max", "mean", "median", "std")
TOKENS = (1, 2, 4, 8, 16)


def _op_ms(op: str, tokens: int, tp: int) -> float:
    return 0.001 * (LAYER_OPS.index(op) + 1 if op in LAYER_OPS else 50) * (1 + tokens / 16) / tp


def write_vidur(folder):
    """Vidur's mlp.csv, attention.csv, all_reduce.csv, send_recv.csv for a Llama-2-7B layer (ms)."""
    mlp = []
    for tp in (1, 2):
        for t in TOKENS:
            row = {f"time_stats.{op}.{s}": _op_ms(op, t, tp) for op in OPS for s in STATS}
            row |= {"n_head": 32, "n_kv_head": 32, "n_embd": 4096, "n_expanded_embd": 11008, "vocab_size": 32768,
                    "use_gated_mlp": True, "num_tokens": t, "num_tensor_parallel_workers": tp}  # fmt: skip
            mlp.append(row)
    pd.DataFrame(mlp).to_csv(folder / "mlp.csv", index=False)
    attn = []
    for b in (1, 8):
        for kv in (31, 1023):
            for prefill in (False, True):
                row = {
                    f"time_stats.attn_decode.{s}": (None if prefill else 0.01 + b * kv * 1e-6) for s in STATS
                }
                row |= {"n_embd": 4096, "n_q_head": 32, "n_kv_head": 32, "block_size": 16, "num_tensor_parallel_workers": 2,
                        "max_model_len": 4096, "batch_size": b, "prefill_chunk_size": 0, "kv_cache_size": kv,
                        "is_prefill": prefill, "attention_backend": "AttentionBackend.FLASH_ATTENTION"}  # fmt: skip
                attn.append(row)
    pd.DataFrame(attn).to_csv(folder / "attention.csv", index=False)
    coll = []
    for name in ("all_reduce", "send_recv"):
        rows = []
        for size in (2048, 1 << 20):
            for workers, per_node in ((2, 2), (4, 4), (2, 1)):
                t = 0.005 + size / 1e9 * workers + (0.02 if per_node == 1 else 0.0)
                rows.append({**{f"time_stats.{name}.{s}": t for s in STATS}, "rank": 0, "num_workers": workers,
                             "size": size, "collective": name, "devices_per_node": per_node,
                             "max_devices_per_node": 8})  # fmt: skip
        frame = pd.DataFrame(rows)
        if name == "send_recv":
            frame = frame[frame["num_workers"] == 2]
        frame.to_csv(folder / f"{name}.csv")  # Vidur writes the index as the first, unnamed column
        coll.append(frame)


def test_vidur_round_trip(tmp_path):
    write_vidur(tmp_path)
    prof = import_vidur(tmp_path, "H100", tp=1, date="2024-05-01")
    assert same_layer_shape(prof.model, get_model("llama2-7b"))  # a catalog model of the profiled shape
    assert prof.dtype == "fp16" and prof.tp == 1 and prof.device == "H100"
    # dense = the nine layer ops summed (emb left out), per token count, in seconds
    for point in prof.dense:
        expect = sum(_op_ms(op, point.batch, 1) for op in LAYER_OPS) * 1e-3
        assert point.time_s == pytest.approx(expect)
    assert [p.batch for p in prof.dense] == list(TOKENS)
    # decode rows only; TP 2 shard -> context (kv + 1) / 2 of the whole model's bytes
    assert {(p.batch, p.context_len) for p in prof.attention} == {(1, 16), (1, 512), (8, 16), (8, 512)}
    assert next(p for p in prof.attention if (p.batch, p.context_len) == (8, 512)).time_s == pytest.approx(
        (0.01 + 8 * 1023e-6) * 1e-3
    )
    # all-reduce: rows with every rank in one node; the link: the cross-node send/recv rows
    assert {(p.nbytes, p.world_size) for p in prof.allreduce} == {
        (2048, 2),
        (2048, 4),
        (1 << 20, 2),
        (1 << 20, 4),
    }
    assert [p.nbytes for p in prof.link] == [2048, 1 << 20]
    assert prof.link[0].time_s == pytest.approx((0.005 + 2048 / 1e9 * 2 + 0.02) * 1e-3)
    dm = DeviceModel(get_device("H100"), prof)  # usable by the simulator
    assert dm.dense_layer(prof.model, "fp16", 4).source == "measured"


def test_profile_import_command(tmp_path, capsys):
    write_vidur(tmp_path)
    out = tmp_path / "out" / "H100-cuda.json"
    args = [
        "profile",
        "import",
        "--format",
        "vidur",
        str(tmp_path),
        "--out",
        str(out),
        "--device",
        "H100",
        "--tp",
        "2",
    ]
    assert main(args) == 0
    prof = load_profile(out)
    assert (
        prof.tp == 2 and len(prof.dense) == len(TOKENS) and "5 dense, 4 attention" in capsys.readouterr().out
    )


def test_profile_import_bad_input_is_one_line(tmp_path, capsys):
    assert (
        main(["profile", "import", "--format", "vidur", str(tmp_path), "--out", "x.json", "--device", "H100"])
        == 2
    )
    assert "mlp.csv not found" in capsys.readouterr().err
    pd.DataFrame({"num_tokens": [1]}).to_csv(tmp_path / "mlp.csv", index=False)
    assert (
        main(["profile", "import", "--format", "vidur", str(tmp_path), "--out", "x.json", "--device", "H100"])
        == 2
    )
    assert "not Vidur's layout, missing columns" in capsys.readouterr().err
