"""Import Vidur's profiling CSVs (microsoft/vidur, data/profiling/...) as a lamina-bench profile.

Vidur's layout, as its profilers write it (pandas `json_normalize` of `time_stats`, times in ms):

* ``mlp.csv`` (vidur/profiling/mlp): ``time_stats.<op>.{min,max,mean,median,std}`` for op in emb,
  input_layernorm, attn_pre_proj, attn_rope, attn_post_proj, post_attention_layernorm, mlp_up_proj, mlp_act,
  mlp_down_proj, add; then n_head, n_kv_head, n_embd, n_expanded_embd, vocab_size, use_gated_mlp,
  num_tokens, num_tensor_parallel_workers. One row per (tokens, TP degree); one decoder layer on one shard.
* ``attention.csv`` (vidur/profiling/attention): ``time_stats.attn_{decode,prefill,...}.*``; n_embd,
  n_q_head, n_kv_head (the model's), block_size, num_tensor_parallel_workers, max_model_len, batch_size,
  prefill_chunk_size, kv_cache_size, is_prefill, attention_backend[, profile_method].
* ``all_reduce.csv`` / ``send_recv.csv`` (vidur/profiling/collectives): an index column,
  ``time_stats.<collective>.*``, rank, num_workers, size (bytes), collective, devices_per_node,
  max_devices_per_node.

Mapping (profiles.py format): dense(batch = tokens) = the sum of the nine layer ops' medians at the
chosen TP degree (`emb` is not part of a layer); attention = decode rows (is_prefill False) at that TP
degree, context = kv_cache_size + 1 (the new token); a TP-T shard reads 1/T of the heads, so its point
is stored as the same KV bytes of the whole model (context / T, rounded); allreduce = rows with all
ranks in one node; link = send/recv rows across nodes (devices_per_node 1) if any, else inside a node.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from lamina_bench.catalog.devices import get_device
from lamina_bench.catalog.models import ModelSpec, list_models, same_layer_shape
from lamina_bench.errors import UserInputError
from lamina_bench.model.ops.layer import LAYER_OPS
from lamina_bench.model.profiles import AllReducePoint, AttentionPoint, DensePoint, Profile, TransferPoint

FORMATS = ("vidur",)
MS = 1e-3


def _read(path: Path, required: bool = True) -> pd.DataFrame | None:
    if not path.is_file():
        if required:
            raise UserInputError(f"{path} not found (a Vidur profile folder has mlp.csv and attention.csv)")
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path} is not a readable CSV: {' '.join(str(exc).split())}") from None


def _need(frame: pd.DataFrame, path: Path, columns) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserInputError(f"{path}: not Vidur's layout, missing columns {', '.join(missing)}")


def _median(op: str) -> str:
    return f"time_stats.{op}.median"


def _model(row: pd.Series, name: str | None) -> ModelSpec:
    d, heads = int(row["n_embd"]), int(row["n_head"])
    gated = str(row["use_gated_mlp"]).lower() == "true"
    shape = ModelSpec(
        "vidur-layer", "llama", num_layers=1, hidden_size=d, num_heads=heads, num_kv_heads=int(row["n_kv_head"]),
        head_dim=d // heads, intermediate_size=int(row["n_expanded_embd"]), vocab_size=int(row["vocab_size"]),
        max_position=4096, mlp="swiglu" if gated else "relu", tie_embeddings=False, qkv_bias=False,
        source="Vidur mlp.csv (one layer; num_layers and max_position not in the profile)",
    )  # fmt: skip
    if name is not None:
        spec = next((m for m in list_models() if m.name == name.lower()), None)
        if spec is None:
            raise UserInputError(f"unknown model {name!r}; give a catalog model (lamina-bench models)")
        if not same_layer_shape(spec, shape):
            raise UserInputError(
                f"model {spec.name}'s layer shape differs from the profiled one ({d} hidden)"
            )
        return spec
    return next((m for m in list_models() if same_layer_shape(m, shape)), shape)


def _dense(mlp: pd.DataFrame, tp: int) -> tuple[DensePoint, ...]:
    rows = mlp[mlp["num_tensor_parallel_workers"] == tp]
    times = rows[[_median(op) for op in LAYER_OPS]].sum(axis=1) * MS
    per_tokens = (
        pd.DataFrame({"tokens": rows["num_tokens"].astype(int), "t": times}).groupby("tokens")["t"].mean()
    )
    return tuple(DensePoint(int(b), float(t)) for b, t in per_tokens.items())


def _attention(attn: pd.DataFrame, path: Path, tp: int) -> tuple[AttentionPoint, ...]:
    _need(
        attn,
        path,
        ("batch_size", "kv_cache_size", "is_prefill", "num_tensor_parallel_workers", _median("attn_decode")),
    )
    decode = attn[
        (attn["is_prefill"].astype(str).str.lower() == "false") & attn[_median("attn_decode")].notna()
    ]
    tps = sorted(decode["num_tensor_parallel_workers"].astype(int).unique())
    if not tps:
        raise UserInputError(f"{path}: no decode rows")
    shard = tp if tp in tps else tps[0]
    rows = decode[decode["num_tensor_parallel_workers"] == shard]
    points = {}
    for _, r in rows.iterrows():
        context = max(1, round((int(r["kv_cache_size"]) + 1) / shard))
        points.setdefault((int(r["batch_size"]), context), float(r[_median("attn_decode")]) * MS)
    return tuple(AttentionPoint(b, c, t) for (b, c), t in sorted(points.items()))


def _collective(frame: pd.DataFrame | None, path: Path, name: str) -> pd.DataFrame:
    if frame is None:
        return pd.DataFrame()
    _need(frame, path, ("size", "num_workers", "devices_per_node", "rank", _median(name)))
    return frame[frame["rank"] == 0]


def import_vidur(
    folder: str | Path, device: str, tp: int = 1, model: str | None = None, date: str | None = None
) -> Profile:
    """A Profile from a Vidur profiling folder (module doc)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder} is not a folder")
    get_device(device)  # a catalog device (the profile applies to it, or derives others from it)
    mlp = _read(folder / "mlp.csv")
    cols = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp", "num_tokens",
            "num_tensor_parallel_workers", *(_median(op) for op in LAYER_OPS))  # fmt: skip
    _need(mlp, folder / "mlp.csv", cols)
    if tp not in set(mlp["num_tensor_parallel_workers"].astype(int)):
        raise UserInputError(f"{folder / 'mlp.csv'} has no rows at TP {tp}")
    attn_path = folder / "attention.csv"
    ar = _collective(_read(folder / "all_reduce.csv", False), folder / "all_reduce.csv", "all_reduce")
    sr = _collective(_read(folder / "send_recv.csv", False), folder / "send_recv.csv", "send_recv")
    allreduce = tuple(
        AllReducePoint(int(r["size"]), int(r["num_workers"]), float(r[_median("all_reduce")]) * MS)
        for _, r in ar.iterrows()
        if int(r["devices_per_node"]) == int(r["num_workers"]) and int(r["num_workers"]) >= 2
    )
    if not sr.empty:
        inter = sr[sr["devices_per_node"].astype(int) == 1]
        sr = inter if not inter.empty else sr
    link = tuple(TransferPoint(int(r["size"]), float(r[_median("send_recv")]) * MS) for _, r in sr.iterrows())
    return Profile(
        device=device, backend="cuda", date=date or dt.date.today().isoformat(),
        versions={"source": f"Vidur profiling CSVs ({folder})"}, dtype="fp16", tp=tp,
        model=_model(mlp.iloc[0], model), dense=_dense(mlp, tp), attention=_attention(_read(attn_path), attn_path, tp),
        allreduce=allreduce, link=link,
    )  # fmt: skip
