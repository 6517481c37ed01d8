"""Tiny random Hugging Face checkpoints and a simple attention context, shared by the reference_impl tests.

`build_tiny_model(kind, path, seed)` writes a few-hundred-KB HF checkpoint (config.json + safetensors)
with every parameter random (norm weights near 1, non-zero biases), so a loader that skips or swaps a
tensor changes the logits. `ContiguousContext` is the simplest correct attention context: one growing
K/V tensor per (sequence, layer), causal softmax in float32. Neither downloads anything.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist

from reference_impl.checkpoint import load_model
from reference_impl.converter import split_model

KINDS = ("llama2-mha", "llama31-gqa", "opt")
MOE_KINDS = ("mixtral", "qwen3-moe")  # 4 experts, top-2; Qwen3: its second layer dense (mlp_only_layers)
# DeepSeek-V3: latent attention; layer 0 dense, layers 1-2 with 8 routed experts in 4 groups (top-3 from the
# best 2) plus a shared expert
MLA_KIND = "deepseek-v3"

# Llama-3.1 scaling shrunk to tiny sizes: with head_dim 16 and theta 1e4 the RoPE wavelengths are
# 6.3, 19.9, 62.8, 199, ... tokens; original_max_position 64 puts the first below 64/4 = 16 (kept), the
# next two between 16 and 64/1 (blended) and the rest above 64 (divided by 8): all three regimes.
LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def _hf_config(kind: str):
    from transformers import DeepseekV3Config, LlamaConfig, MixtralConfig, OPTConfig, Qwen3MoeConfig

    common = {"vocab_size": 256, "hidden_size": 64, "num_attention_heads": 4, "max_position_embeddings": 256}
    if kind == "llama2-mha":
        return LlamaConfig(
            **common, intermediate_size=128, num_hidden_layers=2, num_key_value_heads=4, rms_norm_eps=1e-5
        )
    if kind == "llama31-gqa":
        return LlamaConfig(
            **common,
            intermediate_size=160,
            num_hidden_layers=3,
            num_key_value_heads=2,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            rope_scaling=dict(LLAMA31_ROPE),
        )
    if kind == "opt":
        return OPTConfig(**common, ffn_dim=128, num_hidden_layers=2, word_embed_proj_dim=64, enable_bias=True)
    moe = {"num_hidden_layers": 2, "num_key_value_heads": 2, "num_experts_per_tok": 2, "rms_norm_eps": 1e-5}
    if kind == "mixtral":
        return MixtralConfig(**common, **moe, intermediate_size=32, num_local_experts=4)
    if kind == "qwen3-moe":
        return Qwen3MoeConfig(
            **common, **moe, head_dim=16, intermediate_size=96, moe_intermediate_size=32, num_experts=4,
            norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1],
        )  # fmt: skip
    if kind == MLA_KIND:
        return DeepseekV3Config(
            **common, num_hidden_layers=3, num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=32,
            n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2, n_shared_experts=1,
            first_k_dense_replace=1, routed_scaling_factor=2.5, q_lora_rank=32, kv_lora_rank=16,
            qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, rms_norm_eps=1e-5,
        )  # fmt: skip
    raise ValueError(f"unknown tiny model kind {kind!r}; valid: {', '.join((*KINDS, *MOE_KINDS, MLA_KIND))}")


@torch.no_grad()
def build_tiny_hf_model(kind: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """The HF model itself (eval mode), every parameter random and reproducible from `seed`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_hf_config(kind), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.1 * noise)  # norm gains near 1
        elif name.endswith("bias"):
            p.copy_(0.1 * noise)
        else:
            # std 0.15 (vs HF's 0.02) makes q.k logits O(1), so attention is far from uniform and a wrong
            # mask, scale or rotation shows up in the logits
            p.copy_(0.15 * noise)
    return model.to(dtype).eval()


def build_tiny_model(
    kind: str, path: str | os.PathLike, seed: int = 0, max_shard_size: str | None = None
) -> Path:
    """Write a tiny random HF checkpoint of `kind` (KINDS or MOE_KINDS) to `path`.

    max_shard_size (e.g. "100KB") writes a sharded checkpoint with model.safetensors.index.json.
    """
    model = build_tiny_hf_model(kind, seed)
    out = Path(path)
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(out, **kwargs)
    return out


def hf_logits(hf_model, token_ids: list[int], positions: list[int] | None = None) -> torch.Tensor:
    """Logits (T, V) float32 of HF's model over one whole sequence (no cache)."""
    ids = torch.tensor([token_ids])
    kwargs = {} if positions is None else {"position_ids": torch.tensor([positions])}
    with torch.no_grad():
        return hf_model(input_ids=ids, **kwargs).logits[0].float()


class ContiguousContext:
    """Attention context for tests: per (sequence, layer) one contiguous K/V tensor that grows each step.

    Call `begin_step(seq_ids, num_new)` before each forward; it returns the positions of the new tokens.
    Tokens of a step are laid out sequence after sequence, in `seq_ids` order.
    """

    def __init__(self) -> None:
        self.kv: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (seq, layer) -> k, v (S, Hkv, D)
        self.lengths: dict = {}  # seq -> tokens cached before this step
        self.seq_ids: list = []
        self.num_new: list[int] = []

    def begin_step(self, seq_ids: list, num_new: list[int]) -> torch.Tensor:
        for sid, n in zip(self.seq_ids, self.num_new, strict=True):  # commit the previous step
            self.lengths[sid] = self.lengths.get(sid, 0) + n
        self.seq_ids, self.num_new = list(seq_ids), list(num_new)
        starts = [self.lengths.get(sid, 0) for sid in seq_ids]
        return torch.cat([torch.arange(s, s + n) for s, n in zip(starts, num_new, strict=True)])  # (T,)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int) -> torch.Tensor:
        out, start = [], 0
        for sid, n in zip(self.seq_ids, self.num_new, strict=True):
            old_k, old_v = self.kv.get((sid, layer), (k[:0], v[:0]))
            keys = torch.cat((old_k, k[start : start + n]))  # (S, Hkv, D)
            values = torch.cat((old_v, v[start : start + n]))
            self.kv[(sid, layer)] = (keys, values)
            out.append(causal_attention(q[start : start + n], keys, values))
            start += n
        return torch.cat(out)  # (T, Hq, D)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q (n, Hq, D) are the last n of the S positions of k/v (S, Hkv, D); returns (n, Hq, D)."""
    n, num_heads, head_dim = q.shape
    seq_len = k.shape[0]
    group = num_heads // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)  # (S, Hq, D): query head h reads KV head h // G
    v = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * head_dim**-0.5  # (Hq, n, S)
    query_pos = torch.arange(seq_len - n, seq_len)[:, None]  # (n, 1)
    scores = scores.masked_fill(torch.arange(seq_len)[None, :] > query_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).to(q.dtype)  # (n, Hq, D)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo(rank: int, world_size: int, port: int) -> None:
    """Join a gloo process group on 127.0.0.1 (for torch.multiprocessing.spawn workers)."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.set_num_threads(1)


# A two-sequence script: a joint prefill of prompts of different lengths, then decode steps with both.
SCRIPT_PROMPTS = {"a": [5, 17, 42, 9, 200], "b": [7, 3, 99, 14, 250, 61, 8, 120, 33]}
SCRIPT_DECODES = [{"a": 11, "b": 77}, {"a": 150, "b": 2}, {"a": 31, "b": 64}]


def script_steps() -> list[dict[str, list[int]]]:
    """Steps of the script: seq id -> the tokens it adds in that step."""
    return [SCRIPT_PROMPTS] + [{sid: [tok] for sid, tok in step.items()} for step in SCRIPT_DECODES]


@torch.no_grad()
def run_script(model, steps: list[dict[str, list[int]]], forward=None) -> list[torch.Tensor]:
    """Run `steps` through `model` with a ContiguousContext; logits (T_step, V) float32 of each step.

    forward(input_ids, positions, ctx) defaults to model.forward (the converter tests pass its split run).
    """
    forward = forward or model
    ctx, out = ContiguousContext(), []
    for step in steps:
        positions = ctx.begin_step(list(step), [len(toks) for toks in step.values()])
        ids = torch.tensor([t for toks in step.values() for t in toks])
        device = next(model.parameters()).device
        out.append(model.logits(forward(ids.to(device), positions.to(device), ctx)).cpu())
    return out


def split_forward(split):
    """A forward(input_ids, positions, ctx) that runs a converter SplitModel with ctx.attend."""
    return lambda ids, positions, ctx: split.run(ids, positions, ctx.attend)


def _tp_result(path: str, rank: int, world_size: int) -> dict:
    model = load_model(path, tp_rank=rank, tp_size=world_size)
    split = split_model(model)  # the converter must cope with TP models too (all-reduce inside a leaf)
    attn = model.layers[0].attn
    return {
        "logits": run_script(model, script_steps()),
        "split_logits": run_script(model, script_steps(), split_forward(split)),
        "shapes": (tuple(attn.wq.weight.shape), tuple(attn.wo.weight.shape)),
        "cut_bytes": split.cut_bytes(4, torch.float16),
    }


def tp_worker(rank: int, world_size: int, port: int, paths: list[str], out_dir: str) -> None:
    """Spawned TP rank: load each checkpoint with tp_size=world_size, run the script (also split by the
    converter), save the results to out_dir/<checkpoint index>_<rank>.pt."""
    init_gloo(rank, world_size, port)
    try:
        for i, path in enumerate(paths):
            torch.save(_tp_result(path, rank, world_size), f"{out_dir}/{i}_{rank}.pt")
    finally:
        dist.destroy_process_group()
