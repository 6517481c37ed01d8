"""Calibration: fit the operator model's free constants per GPU on `split = "calibration"` files only.

`calibrate(files)` refuses any file whose split is not "calibration" (and `lamina-bench validate
--calibrate` reads the folder with `load_files(split="calibration")`, which drops validation files
before their rows are checked or kept), so no validation row can reach a fit.

Per GPU, from what its calibration files hold (families a GPU lacks are derived, calibration.py):

* gemm + mode: GEMM rows (aiconfigurator, CUDA graph) and the GEMM ops of Vidur's dense-layer profile
  (kernel only); Levenberg-Marquardt on log error; graph_gap is the CUDA-graph minus kernel-only offset,
  fitted only where both timings exist.
* l2_bw_per_sm (gemm and attention, model/ops/cache.py): fitted with its family where some calibration
  row's working set fits in the L2 (hit share >= 0.5); otherwise nothing in the data pins it, and it is
  taken from the first GPU of the DERIVE_FROM chain that fitted it (tag `derived`; GPUs are fitted
  parents first), else priced like DRAM (tag `assumed`). A fit that finds hits no faster than misses
  (the model floors the hit rate at the DRAM rate, so any value below it fits the same) keeps the DRAM
  rate itself: the fastest rate the rows show, and the one a GPU deriving from it then scales.
* elementwise: the norm / rope / activation / add ops of Vidur's profile; robust NNLS (linear in
  t_op, per_width and 1 / eta_el).
* attention: decode-attention rows; Levenberg-Marquardt over (t_fixed, t_item, t_wave, eta, q) for
  every (chunk_tokens, ctas_per_sm) of a small grid, the best kept.
* allreduce: nccl-tests rows; Levenberg-Marquardt over (t_fixed, alpha per protocol, eta_bus).
* p2p: NCCL send/recv rows; robust NNLS of (t_fixed, 1 / eta_link).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np

from lamina_bench.catalog.devices import get_device
from lamina_bench.errors import UserInputError
from lamina_bench.model.ops.attention import attention_bytes, attention_time_s
from lamina_bench.model.ops.cache import l2_hit_share
from lamina_bench.model.ops.calibration import Calibration, chain
from lamina_bench.model.ops.collectives import nccl_allreduce_s, p2p_time_s
from lamina_bench.model.ops.constants import ATTENTION_KERNELS, Constant
from lamina_bench.model.ops.gemm import elementwise_time_s, gemm_bytes, gemm_time_s
from lamina_bench.model.ops.hardware import Hardware, hardware, sm_count
from lamina_bench.model.ops.layer import LayerShape, layer_bytes, layer_kernels
from lamina_bench.validate.files import ValidationFile
from lamina_bench.validate.lsq import levenberg_marquardt, robust_cost, robust_nnls

CHUNK_GRID = (64, 128, 256, 512, 1024)
CTAS_PER_SM_GRID = (1, 2, 3, 4)
COMMAND = "lamina-bench validate --calibrate"


def shape_of(row) -> LayerShape:
    return LayerShape(
        int(row["hidden_size"]), int(row["intermediate_size"]), int(row["num_heads"]), int(row["num_kv_heads"]),
        int(row["head_dim"]), bool(row.get("gated", True)),
    )  # fmt: skip


def op_kernel(row):
    """The layer kernel (layer.Kernel) a Vidur dense_op row times."""
    kernels = {k.name: k for k in layer_kernels(shape_of(row), row["tokens"], int(row["tp"]))}
    if row["op"] not in kernels:
        raise UserInputError(f"unknown dense op {row['op']!r}; valid: {', '.join(kernels)}")
    return kernels[row["op"]]


def _share(x):
    """A fraction of a datasheet peak, in (0, 1): efficiencies cannot exceed the peak."""
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def _median_abs(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.median(np.abs(np.asarray(pred) / np.asarray(meas) - 1.0)))


class _Fit:
    """Constants fitted for one family of one GPU, with the files and the fit's own error; `given` holds
    the constants the data could not pin (taken from elsewhere, with their own tag and source)."""

    def __init__(
        self, values: dict[str, float], files: Sequence[str], pred, meas, note: str = "",
        given: dict[str, Constant] | None = None,
    ) -> None:  # fmt: skip
        self.values, self.files, self.note = values, sorted(set(files)), note
        self.rows, self.median_abs_err = len(meas), _median_abs(pred, meas)
        self.given = given or {}

    def constants(self, date: str) -> dict[str, Constant]:
        src = "fitted on " + ", ".join(self.files) + (f" ({self.note})" if self.note else "")
        out = {k: Constant(float(v), "measured-fit", src, date) for k, v in self.values.items()}
        return out | {
            k: c if c.date else Constant(c.value, c.tag, c.source, date) for k, c in self.given.items()
        }

    def quality(self) -> dict:
        return {"rows": self.rows, "median_abs_err": round(self.median_abs_err, 5), "files": self.files}


# ---- per family ---------------------------------------------------------------------------------------

L2 = "l2_bw_per_sm"


def l2_resident(hw: Hardware, ws) -> bool:
    """Whether some row's working set fits in the L2 (hit share >= 0.5), so that the data pins `L2`."""
    return bool(np.any(l2_hit_share(np.asarray(ws, dtype=float), hw.l2_bytes) >= 0.5))


def _l2_floor(values: dict, hw: Hardware, dram_rate: float) -> str:
    """Raise a fitted `L2` below the DRAM rate to it (module doc); the note for the constant's source."""
    if values[L2] * hw.sms >= dram_rate:
        return ""
    values[L2] = dram_rate / hw.sms
    return "L2 hits no faster than DRAM reads in these rows: the DRAM rate per SM"


def _l2_given(hw: Hardware, l2: Constant | None, dram_rate: float) -> dict[str, Constant]:
    """`L2` when the rows cannot pin it: the parent's (derived), else priced like DRAM (assumed)."""
    if l2 is not None:
        return {L2: l2}
    why = "no calibration row of this GPU or of any GPU it derives from is L2-resident"
    return {L2: Constant(dram_rate / hw.sms, "assumed", f"L2 hits priced like DRAM: {why}", "")}


def fit_gemm(hw: Hardware, m, n, k, times, graph, files, ws=None, l2: Constant | None = None):
    """GEMM constants and, where both timings exist, the CUDA-graph gap (module doc). `ws`: each row's
    working set (inf: no reuse); `l2`: the `L2` constant to use when no row is L2-resident."""
    m, n, k, times, graph = (np.asarray(v, dtype=float) for v in (m, n, k, times, graph))
    ws = np.full_like(times, np.inf) if ws is None else np.asarray(ws, dtype=float)
    with_gap = bool(graph.any() and (~graph.astype(bool)).any())
    free_l2 = l2_resident(hw, ws)
    l2_fixed = hw.mem_bw / hw.sms if l2 is None else l2.value  # unpinned and unknown: DRAM-like

    def unpack(x):
        g = {"t_fixed_s": np.exp(x[0]), "eta_mem": _share(x[1]), "ramp_bytes": np.exp(x[2]),
             "eta_cmp": _share(x[3]), "q": 1.0 + np.exp(x[4]), L2: np.exp(x[5]) if free_l2 else l2_fixed}  # fmt: skip
        return g, (np.exp(x[-1]) if with_gap else 0.0)

    def residual(x):
        g, gap = unpack(x)
        return np.log((gemm_time_s(g, hw, m, n, k, ws_bytes=ws) + gap * graph) / times)

    x0 = [np.log(3e-6), _logit(0.9), np.log(1e5), _logit(0.7), 0.0, np.log(2.0 * hw.mem_bw / hw.sms)]
    x0 = np.array(x0[: 6 if free_l2 else 5] + ([np.log(1e-6)] if with_gap else []))
    x = levenberg_marquardt(residual, x0)
    g, gap = unpack(x)
    pred = gemm_time_s(g, hw, m, n, k, ws_bytes=ws) + gap * graph
    given = {} if free_l2 else _l2_given(hw, l2, hw.mem_bw * g["eta_mem"])
    values = {key: float(v) for key, v in g.items() if key not in given}
    note = _l2_floor(values, hw, hw.mem_bw * g["eta_mem"]) if free_l2 else ""
    gemm = _Fit(values, files, pred, times, note, given)
    mode = (
        _Fit({"graph_gap_s": float(gap)}, files, pred, times, "CUDA-graph minus kernel-only offset")
        if with_gap
        else None
    )
    return gemm, mode


def fit_elementwise(hw: Hardware, kinds, widths, nbytes, times, files) -> _Fit:
    kinds, widths, nbytes, times = (np.asarray(v) for v in (kinds, widths, nbytes, times))
    ops = ("norm", "rope", "act", "add")
    feats = np.stack(
        [(kinds == op).astype(float) for op in ops] + [widths.astype(float), nbytes / hw.mem_bw], axis=1
    )
    c = robust_nnls(feats, times.astype(float))
    values = {f"t_{op}_s": float(c[i]) for i, op in enumerate(ops)}
    values |= {"per_width_s": float(c[4]), "eta_el": float(1.0 / c[5]) if c[5] > 0 else 1.0}
    pred = np.array(
        [elementwise_time_s(values, hw, kd, w, b) for kd, w, b in zip(kinds, widths, nbytes, strict=True)]
    )
    return _Fit(values, files, pred, times)


def fit_attention(
    hw: Hardware, rows: dict[str, np.ndarray], graph_gap_s: float, files, l2: Constant | None = None
) -> _Fit:
    """rows: batch, context, heads, kv_heads, head_dim, time_s, graph (bool), ws (working set, inf: no
    reuse); `l2`: the `L2` constant to use when no row is L2-resident."""
    b, c, t = rows["batch"], rows["context"], rows["time_s"]
    ws = rows.get("ws", np.full_like(t, np.inf))
    offset = ATTENTION_KERNELS.value * graph_gap_s * rows["graph"]
    shape = (rows["heads"], rows["kv_heads"], rows["head_dim"])
    free_l2 = l2_resident(hw, ws)
    l2_fixed = hw.mem_bw / hw.sms if l2 is None else l2.value  # unpinned and unknown: DRAM-like
    best = None
    for chunk in CHUNK_GRID:
        for per_sm in CTAS_PER_SM_GRID:
            grid = {"chunk_tokens": chunk, "ctas_per_sm": per_sm}

            def unpack(x, grid=grid):
                return {"t_fixed_s": np.exp(x[0]), "t_item_s": np.exp(x[1]), "t_wave_s": np.exp(x[2]),
                        "eta": _share(x[3]), "q": 1.0 + np.exp(x[4]),
                        L2: np.exp(x[5]) if free_l2 else l2_fixed, **grid}  # fmt: skip

            def predict(values):
                return attention_time_s(values, hw, b, c, *shape, ws_bytes=ws) + offset

            def residual(x, unpack=unpack, predict=predict):
                return np.log(predict(unpack(x)) / t)

            x0 = [
                np.log(1e-5),
                np.log(3e-8),
                np.log(1e-7),
                _logit(0.9),
                0.0,
                np.log(2.0 * hw.mem_bw / hw.sms),
            ]
            values = unpack(levenberg_marquardt(residual, np.array(x0[: 6 if free_l2 else 5])))
            pred = predict(values)
            score = robust_cost(np.log(pred / t))
            if best is None or score < best[0]:
                best = (score, values, pred)
    note = f"chunk_tokens and ctas_per_sm by grid search over {CHUNK_GRID} x {CTAS_PER_SM_GRID}"
    given = {} if free_l2 else _l2_given(hw, l2, hw.mem_bw * best[1]["eta"])
    values = {k: float(v) for k, v in best[1].items() if k not in given}
    floor = _l2_floor(values, hw, hw.mem_bw * values["eta"]) if free_l2 else ""
    return _Fit(values, files, best[2], t, "; ".join(n for n in (note, floor) if n), given)


def fit_allreduce(hw: Hardware, nbytes, world, link, times, files) -> _Fit:
    nbytes, world, times = (np.asarray(v, dtype=float) for v in (nbytes, world, times))
    groups = [
        (int(w), lk, (world == w) & (np.asarray(link) == lk)) for w in np.unique(world) for lk in set(link)
    ]

    def unpack(x):
        return {"t_fixed_s": np.exp(x[0]), "alpha_LL_s": np.exp(x[1]), "alpha_LL128_s": np.exp(x[2]),
                "alpha_Simple_s": np.exp(x[3]), "eta_bus": np.exp(x[4])}  # fmt: skip

    def predict(c):
        out = np.empty_like(times)
        for w, lk, sel in groups:
            if sel.any():
                out[sel] = nccl_allreduce_s(c, hw, nbytes[sel], w, lk)
        return out

    x = levenberg_marquardt(
        lambda x: np.log(predict(unpack(x)) / times), np.log([5e-6, 5e-7, 1e-6, 3e-6, 0.8])
    )
    values = {k: float(v) for k, v in unpack(x).items()}
    return _Fit(values, files, predict(values), times)


def fit_p2p(hw: Hardware, nbytes, link, times, files) -> _Fit:
    nbytes, times = np.asarray(nbytes, dtype=float), np.asarray(times, dtype=float)
    bw = np.array([hw.link_bw(lk) for lk in link])
    coef = robust_nnls(np.stack([np.ones_like(nbytes), nbytes / bw], axis=1), times)
    values = {"t_fixed_s": float(coef[0]), "eta_link": float(1.0 / coef[1]) if coef[1] > 0 else 1.0}
    pred = np.array([p2p_time_s(values, hw, s, lk) for s, lk in zip(nbytes, link, strict=True)])
    return _Fit(values, files, pred, times)


# ---- one GPU, then all ----------------------------------------------------------------------------------


def _parent_l2(gpu: str, family: str, fitted: dict[str, dict[str, dict[str, Constant]]]) -> Constant | None:
    """The `L2` constant of `family` from the first GPU of `gpu`'s DERIVE_FROM chain that fitted it."""
    for parent in chain(gpu)[1:]:
        c = fitted.get(parent, {}).get(family, {}).get(L2)
        if c is not None and c.tag == "measured-fit":
            return c.derived_from(parent)
    return None


def _gemm_rows(files: Sequence[ValidationFile]):
    """(gemm rows (m, n, k, time_s, graph, ws), elementwise rows (kind, width, bytes, time_s), files of each)."""
    gemm_rows, elem_rows, gemm_files, elem_files = [], [], [], []
    for f in files:
        if f.kind == "gemm":
            for r in f.rows:
                ws = f.reuse * float(gemm_bytes(r["m"], r["n"], r["k"])) if f.reuse else np.inf
                gemm_rows.append((r["m"], r["n"], r["k"], r["time_us"] * 1e-6, f.timing == "graph", ws))
            gemm_files.append(f.id)
        elif f.kind == "dense_op":
            for r in f.rows:
                kern = op_kernel(r)
                if kern.kind == "gemm":
                    layer = float(layer_bytes(shape_of(r), r["tokens"], int(r["tp"])))
                    ws = f.reuse * layer if f.reuse else np.inf
                    gemm_rows.append((kern.m, kern.n, kern.k, r["time_us"] * 1e-6, f.timing == "graph", ws))
                    gemm_files.append(f.id)
                else:
                    elem_rows.append((kern.kind, kern.width, float(kern.nbytes), r["time_us"] * 1e-6))
                    elem_files.append(f.id)
    return gemm_rows, elem_rows, gemm_files, elem_files


def _attention_rows(attn: Sequence[ValidationFile]) -> dict[str, np.ndarray]:
    cols = {key: [] for key in ("batch", "context", "heads", "kv_heads", "head_dim", "time_s", "graph", "ws")}
    for f in attn:
        for r in f.rows:
            for key, col in (("batch", "batch"), ("context", "context"), ("heads", "num_heads"),
                             ("kv_heads", "num_kv_heads"), ("head_dim", "head_dim")):  # fmt: skip
                cols[key].append(float(r[col]))
            cols["time_s"].append(r["time_us"] * 1e-6)
            cols["graph"].append(float(f.timing == "graph"))
            nbytes = attention_bytes(
                r["batch"], r["context"], r["num_heads"], r["num_kv_heads"], r["head_dim"]
            )
            cols["ws"].append(f.reuse * float(nbytes) if f.reuse else np.inf)
    return {k: np.array(v) for k, v in cols.items()}


def _fit_gpu(gpu: str, files: Sequence[ValidationFile], fitted: dict | None = None) -> dict[str, _Fit]:
    """Every family `files` cover for `gpu`; `fitted`: the constants of GPUs fitted before (parents)."""
    fitted = fitted or {}
    device = get_device(gpu)
    fits: dict[str, _Fit] = {}
    gemm_rows, elem_rows, gemm_files, elem_files = _gemm_rows(files)
    if gemm_rows:
        m, n, k, t, graph, ws = zip(*gemm_rows, strict=True)
        l2 = _parent_l2(gpu, "gemm", fitted)
        sms = next((c for g in chain(gpu) if (c := sm_count(g)) is not None), None)  # as GpuConstants.sms
        fits["gemm"], mode = fit_gemm(hardware(device, sms), m, n, k, t, graph, gemm_files, ws, l2)
        if mode is not None:
            fits["mode"] = mode
    if elem_rows:
        hw = hardware(device, (1, "unused"))  # elementwise times do not read the SM count
        fits["elementwise"] = fit_elementwise(hw, *zip(*elem_rows, strict=True), elem_files)
    attn = [f for f in files if f.kind == "decode_attention"]
    if attn:
        gap = fits["mode"].values["graph_gap_s"] if "mode" in fits else 0.0
        if "mode" not in fits and any(f.timing == "graph" for f in attn):
            raise UserInputError(
                f"{gpu}: CUDA-graph attention rows need a fitted graph gap (GEMM rows in both modes)"
            )
        l2 = _parent_l2(gpu, "attention", fitted)
        fits["attention"] = fit_attention(
            hardware(device), _attention_rows(attn), gap, [f.id for f in attn], l2
        )
    hw = hardware(device, (1, "unused"))  # collectives do not read the SM count
    ar = [f for f in files if f.kind == "allreduce"]
    if ar:
        rows = [(r["bytes"], r["world_size"], r["link"], r["time_us"] * 1e-6) for f in ar for r in f.rows]
        s, w, lk, t = zip(*rows, strict=True)
        fits["allreduce"] = fit_allreduce(hw, s, w, list(lk), t, [f.id for f in ar])
    p2p = [f for f in files if f.kind == "p2p"]
    if p2p:
        rows = [(r["bytes"], r["link"], r["time_us"] * 1e-6) for f in p2p for r in f.rows]
        s, lk, t = zip(*rows, strict=True)
        fits["p2p"] = fit_p2p(hw, s, list(lk), t, [f.id for f in p2p])
    return fits


def calibrate(files: Sequence[ValidationFile], date: str | None = None) -> Calibration:
    """Fit every GPU that has calibration files; refuses any file that is not `split = "calibration"`."""
    for f in files:
        if f.split != "calibration":
            raise UserInputError(
                f"{f.path}: split is {f.split!r}; the calibration fits calibration files only"
            )
    date = date or dt.date.today().isoformat()
    gpus, quality = {}, {}
    # parents first (shorter DERIVE_FROM chains), so a GPU can take what its data cannot pin from them
    for gpu in sorted({f.gpu for f in files if f.kind != "e2e"}, key=lambda g: (len(chain(g)), g)):
        fits = _fit_gpu(gpu, [f for f in files if f.gpu == gpu], gpus)
        gpus[gpu] = {fam: fit.constants(date) for fam, fit in fits.items()}
        quality[gpu] = {fam: fit.quality() for fam, fit in fits.items()}
    return Calibration(date, gpus, quality, COMMAND)
