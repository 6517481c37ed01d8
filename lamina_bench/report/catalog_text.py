"""Plain-text tables of the catalogs and of a measured profile, for `models`, `hardware` and `profile`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lamina_bench.catalog.device_spec import DeviceSpec
from lamina_bench.catalog.models import ModelSpec
from lamina_bench.model.profiles import Profile


def fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    """A number divided by `scale`, or "n/a" for unknown (never a guessed value)."""
    return "n/a" if value is None else f"{value / scale:,.{digits}f}"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns with a rule under the header."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=True)]
    lines = [
        "  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _experts(spec: ModelSpec) -> str:
    """ "k/E" routed experts per token / per layer, "+S" shared experts; "-" for a dense model."""
    if spec.moe is None:
        return "-"
    shared = f"+{spec.moe.num_shared_experts}" if spec.moe.num_shared_experts else ""
    return f"{spec.moe.top_k}/{spec.moe.num_experts}{shared}"


def models_text(rows: Sequence[tuple[ModelSpec, Mapping[str, float | None]]], dtype: str) -> str:
    """The model catalog with its derived sizes (`catalog.moe.moe_sizes`; MoE columns "-" for dense models)."""
    headers = [
        "model",
        "layers",
        "d",
        "heads/kv",
        "ffn",
        "experts",
        "params (B)",
        "active (B)",
        f"weights GB ({dtype})",
        "KV B/token",
        "net B/token/layer",
        "source",
    ]
    body = [
        [
            s.name,
            s.num_layers,
            s.hidden_size,
            f"{s.num_heads}/{'MLA' if s.mla else s.num_kv_heads}",
            s.intermediate_size if s.moe is None else s.moe.expert_intermediate_size,
            _experts(s),
            fmt(d["params"], 1e9, 2),
            "-" if d.get("active_params") is None else fmt(d["active_params"], 1e9, 2),
            fmt(d["weight_bytes"], 1e9, 1),
            f"{d['kv_bytes_per_token']:,}",
            f"{d['net_bytes_per_token_per_layer']:,}",
            s.source,
        ]
        for s, d in rows
    ]
    notes = (
        "All sizes derived from the configs (GB = 1e9 bytes). MoE models: ffn is each expert's width; experts "
        "k/E+S = routed per token / per layer + shared; active = parameters one token uses (embedding "
        "table included). MLA: KV caches the latent + RoPE key; net bytes assume the attention pool holds "
        "no weights (catalog.moe)."
    )
    return text_table(headers, body) + "\n\n" + notes


_DEVICE_HEADERS = (
    "device",
    "bf16 TFLOP/s",
    "memory GB",
    "bandwidth TB/s",
    "power W",
    "link GB/s/dir",
    "NIC Gb/s",
    "$/hour",
)


def _device_row(d: DeviceSpec) -> list[str]:
    return [
        d.name,
        fmt(d.bf16_flops_per_s, 1e12, 0),
        fmt(d.memory_bytes, 1e9, 0),
        fmt(d.mem_bandwidth_bytes_per_s, 1e12, 2),
        fmt(d.power_w, 1, 0),
        fmt(d.intra_link_bytes_per_s, 1e9, 0),
        fmt(d.nic_gbps, 1, 0),
        fmt(d.usd_per_hour, 1, 2),
    ]


def hardware_text(
    catalog: Mapping[str, DeviceSpec], local: Sequence[DeviceSpec], sources: bool, prices: str = ""
) -> str:
    """The device catalog and the detected local devices; with `sources`, every value's source and date.
    `prices` names the price set the $/hour column comes from."""
    parts = (
        [f"prices: {prices}; n/a = not priced in this set (--prices NAME picks another)", ""]
        if prices
        else []
    )
    for title, devices in (("catalog", list(catalog.values())), ("local devices (detected)", list(local))):
        parts += [f"{title}:", text_table(_DEVICE_HEADERS, [_device_row(d) for d in devices]), ""]
    if not sources:
        parts.append(
            "Values are dense (no sparsity) vendor figures. --sources lists each value's source and date."
        )
        return "\n".join(parts)
    for d in catalog.values():
        parts.append(f"{d.name} ({d.full_name}):")
        parts += [f"  {key}: {src}" for key, src in d.sources.items()]
    return "\n".join(parts)


def profile_text(profile: Profile, path: object) -> str:
    """What a profile measured, one line per point (every time measured)."""
    lines = [
        f"measured profile of {profile.device} ({profile.backend}, {profile.dtype}, {profile.model.name}) -> {path}"
    ]
    lines += [
        f"  dense layer  batch {p.batch:>4}: {p.time_s * 1e3:8.3f} ms (measured)" for p in profile.dense
    ]
    lines += [
        f"  attention    batch {p.batch:>4} context {p.context_len:>6}: {p.time_s * 1e3:8.3f} ms (measured)"
        for p in profile.attention
    ]
    for kind, steps in (("engine", profile.engine_steps), ("lamina", profile.lamina_steps)):
        lines += [
            f"  {kind} step  batch {p.batch:>4} context {p.context_len:>6}: {p.time_s * 1e3:8.3f} ms (measured)"
            for p in steps
        ]
    return "\n".join(lines)
