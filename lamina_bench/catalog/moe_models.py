"""Mixture-of-experts catalog entries: exact shapes from each repository's Hugging Face config.json.

Field by field: hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
intermediate_size, vocab_size, max_position_embeddings, tie_word_embeddings; experts from
num_local_experts / num_experts / n_routed_experts, num_experts_per_tok, moe_intermediate_size,
n_shared_experts, first_k_dense_replace, n_group, topk_group, routed_scaling_factor, norm_topk_prob;
MLA from q_lora_rank, kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim. The derived totals
match the model cards (tests/lamina_bench/test_moe_catalog.py): Mixtral 46.7B / 12.9B active, 8x22B 141B /
39B, Qwen3 30.5B / 3.3B and 235B / 22B, DeepSeek-V3 671B / 37B.

Entries are keyword arguments of catalog.models.MoEModelSpec (which builds them), so this module needs
nothing from catalog.models.
"""

from __future__ import annotations

from typing import Any

from lamina_bench.catalog.moe import MLASpec, MoESpec


def _mixtral(name: str, source: str, **shape: int) -> dict[str, Any]:
    """Mixtral: Mistral attention (GQA, 8 KV heads of 128, RoPE) and 8 SwiGLU experts per layer, top-2,
    softmax over the chosen experts' logits; intermediate_size is each expert's width; no dense FFN."""
    return dict(
        name=name, family="mixtral", **shape, num_kv_heads=8, head_dim=128, vocab_size=32000, mlp="swiglu",
        tie_embeddings=False, qkv_bias=False, source=source,
        moe=MoESpec(num_experts=8, top_k=2, expert_intermediate_size=shape["intermediate_size"]),
    )  # fmt: skip


def _qwen3_moe(name: str, source: str, expert_width: int, **shape: int) -> dict[str, Any]:
    """Qwen3-MoE: GQA with 4 KV heads of 128 and q/k RMSNorm, 128 experts per layer, top-8, softmax then
    renormalised top-k (norm_topk_prob true); every layer is MoE (decoder_sparse_step 1, no mlp_only_layers)."""
    return dict(
        name=name, family="qwen3_moe", **shape, num_kv_heads=4, head_dim=128, vocab_size=151936,
        max_position=40960, mlp="swiglu", tie_embeddings=False, qkv_bias=False, source=source, qk_norm=True,
        moe=MoESpec(num_experts=128, top_k=8, expert_intermediate_size=expert_width, norm_topk_prob=True),
    )  # fmt: skip


MOE_MODELS: tuple[dict[str, Any], ...] = (
    # Mixtral of Experts (arXiv 2401.04088). v0.1 base repositories: vocab 32000.
    _mixtral("mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1 config.json", num_layers=32, hidden_size=4096,
             num_heads=32, intermediate_size=14336, max_position=32768),
    _mixtral("mixtral-8x22b", "mistralai/Mixtral-8x22B-v0.1 config.json", num_layers=56, hidden_size=6144,
             num_heads=48, intermediate_size=16384, max_position=65536),
    # Qwen3 (arXiv 2505.09388). intermediate_size is the (unused) dense width the config also lists.
    _qwen3_moe("qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B config.json", expert_width=768, num_layers=48,
               hidden_size=2048, num_heads=32, intermediate_size=6144),
    _qwen3_moe("qwen3-235b-a22b", "Qwen/Qwen3-235B-A22B config.json", expert_width=1536, num_layers=94,
               hidden_size=4096, num_heads=64, intermediate_size=12288),
    # DeepSeek-V3 (arXiv 2412.19437): MLA; 3 dense layers, then 58 MoE layers of 256 routed + 1 shared expert,
    # top-8 within the best 4 of 8 groups, sigmoid scores with a selection bias, weights scaled by 2.5.
    # num_key_value_heads = num_attention_heads = 128 as in the config; head_dim = 128 + 64 (q/k width).
    dict(
        name="deepseek-v3", family="deepseek_v3", num_layers=61, hidden_size=7168, num_heads=128,
        num_kv_heads=128, head_dim=192, intermediate_size=18432, vocab_size=129280, max_position=163840,
        mlp="swiglu", tie_embeddings=False, qkv_bias=False, source="deepseek-ai/DeepSeek-V3 config.json",
        moe=MoESpec(num_experts=256, top_k=8, expert_intermediate_size=2048, scoring="sigmoid",
                    norm_topk_prob=True, num_shared_experts=1, dense_layers=(0, 1, 2), n_group=8, topk_group=4,
                    routed_scaling_factor=2.5, score_bias=True),
        mla=MLASpec(q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128),
    ),
)  # fmt: skip
