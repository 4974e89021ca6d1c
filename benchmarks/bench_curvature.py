"""Benchmark of the curvature core: key figures measured side by side in one run.

P1  Dense block inverse of the empirical Fisher, B = 100: the fast exact path
    (``from_gradients(…, "dense")`` = batched GᵀG, then ``inverse_diag(λ)`` = one batched
    Cholesky) against the paper's Woodbury recursion (``from_gradients(…, "woodbury")`` then
    ``inverse_diag(λ)``), both in float64 from float32 gradients; times, speedup, and the max
    relative error of diag(F_λ⁻¹) against an independent float64 reference (SVD of each
    block's gradient columns) on blocks whose dampened condition number is 1e6. The
    recursion is first timed on a pilot of evenly spread blocks; it runs at full size when
    the pilot predicts at most ``--woodbury-full-limit`` seconds, otherwise its time is
    extrapolated linearly in the number of blocks and labelled EXTRAPOLATED.
P2  Whole-layer low-rank blocks of a ResNet-20-sized weight set (``LowRankCurvature``):
    build + ``inverse_diag`` for every weight + one OBS update, in a fresh subprocess whose
    peak RSS (VmHWM) is reported raw, with the RSS after ``import torch`` beside it.
P3  Per-example gradients by ``torch.func`` (``gradient_samples``) against a Python loop of
    single-example backward passes and one plain batch gradient, on ``DigitsCNN``.

Usage::

    python benchmarks/bench_curvature.py            # full size (3-5 minutes on 2 cores)
    python benchmarks/bench_curvature.py --quick    # smoke test, reduced sizes
    python benchmarks/bench_curvature.py --omp-passive   # idle OpenMP threads sleep

The last line printed is always::

    P1 speedup=<x> maxrelerr=<e> P2 seconds=<s> peak_gb=<g> P3 loop_ratio=<r>

Columns: ``seconds`` wall time (``time.perf_counter``, after one warm-up, torch's default
number of threads), ``cpu_s`` user + system CPU seconds of the process summed over its
threads, ``sys_s`` the system part (page faults of fresh allocations show up here),
``load`` the 1-minute load average when the row was measured: other processes sharing the
cores inflate wall times, and spinning OpenMP threads inflate CPU times too. Memory
figures are in GB (10**9 bytes).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

if "--omp-passive" in sys.argv[1:]:  # must be set before torch loads its OpenMP runtime
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch  # noqa: E402

GB = 1e9  # memory figures are in decimal gigabytes

# The conv layers of CIFAR ResNet-20 inside its three residual stages (option-A shortcuts,
# which have no weights): 6 × 16·16·9, then 16·32·9 + 5 × 32·32·9, then 32·64·9 + 5 × 64·64·9.
# They sum to 267,264. The stem conv (3·16·9 = 432) and the classifier (64·10 = 640) are left
# out; with them the model has 268,336 Conv/Linear weights. Option-B 1×1 shortcut convs
# (16·32 + 32·64 = 2,560) would give 269,824, so they are not counted either.
RESNET20_STAGE_CONVS: list[tuple[str, tuple[int, int, int, int]]] = (
    [(f"layer1.{b}.conv{c}", (16, 16, 3, 3)) for b in range(3) for c in (1, 2)]
    + [("layer2.0.conv1", (32, 16, 3, 3)), ("layer2.0.conv2", (32, 32, 3, 3))]
    + [(f"layer2.{b}.conv{c}", (32, 32, 3, 3)) for b in (1, 2) for c in (1, 2)]
    + [("layer3.0.conv1", (64, 32, 3, 3)), ("layer3.0.conv2", (64, 64, 3, 3))]
    + [(f"layer3.{b}.conv{c}", (64, 64, 3, 3)) for b in (1, 2) for c in (1, 2)]
)
RESNET20_STAGE_WEIGHTS = 267_264


# --------------------------------------------------------------------------------------------
# results table
# --------------------------------------------------------------------------------------------
@dataclass
class Table:
    """Rows of key figures; ``load`` is the 1-minute load average when the row was measured."""

    rows: list[dict] = field(default_factory=list)

    def add(
        self,
        figure: str,
        method: str,
        cost: Cost | None = None,
        ratio: float | None = None,
        gb: float | None = None,
        error: float | None = None,
        goal: str = "",
        met: bool | None = None,
        note: str = "",
        load: float | None = None,
    ) -> None:
        if load is None and cost is not None:
            load = os.getloadavg()[0]
        self.rows.append(
            {
                "figure": figure,
                "method": method,
                "seconds": None if cost is None else cost.wall,
                "cpu_s": None if cost is None else cost.cpu,
                "sys_s": None if cost is None else cost.sys,
                "ratio": ratio,
                "GB": gb,
                "error": error,
                "goal": goal,
                "met": "" if met is None else ("yes" if met else "NO"),
                "load": load,
                "note": note,
            }
        )

    def render(self) -> str:
        """Aligned columns, rows by figure; text left, numbers right, blank where not measured."""
        formats = {
            "seconds": "{:.3f}",
            "cpu_s": "{:.2f}",
            "sys_s": "{:.2f}",
            "ratio": "{:.4g}",
            "GB": "{:.2f}",
            "error": "{:.2e}",
            "load": "{:.1f}",
        }
        columns = list(self.rows[0])
        rows = sorted(self.rows, key=lambda row: row["figure"])
        cells = [
            ["" if _missing(row[c]) else formats.get(c, "{}").format(row[c]) for c in columns]
            for row in rows
        ]
        widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

        def line(values):
            return "  ".join(
                v.rjust(w) if c in formats else v.ljust(w)
                for c, v, w in zip(columns, values, widths, strict=True)
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(columns), rule, *(line(r) for r in cells)])


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


class Cost(NamedTuple):
    """Wall seconds; CPU seconds (user + system, summed over threads); system seconds alone."""

    wall: float
    cpu: float
    sys: float

    def __add__(self, other):
        return Cost(*(a + b for a, b in zip(self, other, strict=True)))

    def scaled(self, factor: float) -> Cost:
        return Cost(*(a * factor for a in self))


def _timed(fn):
    """``(fn(), Cost)``, the cost of this process measured around the call."""
    wall, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    out = fn()
    wall, after = time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_SELF)
    system = after.ru_stime - before.ru_stime
    return out, Cost(wall, after.ru_utime - before.ru_utime + system, system)


def _rss_gb() -> float:
    """Peak RSS of this process so far, in GB.

    VmHWM of /proc/self/status: the high-water mark of this process image only. (ru_maxrss
    of RUSAGE_SELF would also keep the peak of the forked parent image that exec replaced.)
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


# --------------------------------------------------------------------------------------------
# P1: dense block inverse, fast path vs Woodbury recursion
# --------------------------------------------------------------------------------------------
def _p1_spectrum(block: int, damping: float, cond: float) -> torch.Tensor:
    """Eigenvalues e_i of the undampened block GᵀG/m: geometric from e_max down to e_min.

    e_min = λ/100 (below the damping, as real gradient spectra decay) and e_max is chosen so
    that the dampened block has condition (e_max + λ)/(e_min + λ) = ``cond`` exactly.
    """
    e_min = damping / 100
    e_max = cond * (e_min + damping) - damping
    ratio = (e_min / e_max) ** (1 / (block - 1))
    return e_max * ratio ** torch.arange(block, dtype=torch.float64)


def p1_gradients(
    num_blocks: int, block: int, m: int, damping: float, cond: float, seed: int
) -> torch.Tensor:
    """(m, num_blocks·block) float32 gradients; every block's dampened Fisher has condition ~cond.

    Block b gets G_b = √m · U diag(√e) V_bᵀ, computed in float64 and rounded to float32. U (m×B)
    and V (B×B) have orthonormal columns (QR of seeded Gaussians); V_b = S_b V[ρ_b] permutes
    V's rows (seeded ρ_b) and flips their signs (seeded S_b = diag(±1)), so V_b is orthogonal
    and every block differs; e is the geometric spectrum of :func:`_p1_spectrum`. Hence
    G_bᵀG_b/m = V_b diag(e) V_bᵀ and F_λ = V_b diag(e + λ) V_bᵀ, up to the float32 rounding
    of G (the condition numbers reported are measured on the rounded gradients).
    """
    if m < block:
        raise ValueError(f"P1 needs m ≥ block size for an exact spectrum, got m={m} < {block}")
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, block, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(block, block, generator=gen, dtype=torch.float64))
    left = u * (m * _p1_spectrum(block, damping, cond)).sqrt()  # U diag(singular values of G_b)
    out = torch.empty(m, num_blocks * block, dtype=torch.float32)
    step = 64
    for a in range(0, num_blocks, step):
        n = min(step, num_blocks - a)
        perm = torch.argsort(torch.rand(n, block, generator=gen), dim=1)
        signs = torch.randint(0, 2, (n, block, 1), generator=gen).double() * 2 - 1
        v_b = v[perm] * signs  # (n, B, B): V_b = S_b V[ρ_b], orthogonal
        right = v_b.transpose(1, 2).transpose(0, 1).reshape(block, n * block)  # [V_1ᵀ … V_nᵀ]
        out[:, a * block : (a + n) * block] = (left @ right).float()
    return out


def p1_reference(g32: torch.Tensor, blocks: list[int], block: int, damping: float):
    """Float64 diag(F_λ⁻¹) and condition numbers of the chosen blocks, from the SVD of G_b.

    Independent of both paths under test: G_b/√m = U S Vᵀ (float64 SVD of the float32
    gradients, converted exactly), so F_λ = V diag(S² + λ) Vᵀ and
    [F_λ⁻¹]_ii = Σ_j V_ij² / (S_j² + λ), without ever forming GᵀG.
    """
    m = g32.shape[0]
    cols = torch.cat([torch.arange(b * block, (b + 1) * block) for b in blocks])
    gb = g32[:, cols].double().reshape(m, len(blocks), block).transpose(0, 1) / math.sqrt(m)
    _, s, vh = torch.linalg.svd(gb, full_matrices=False)  # vh: (n, B, B)
    eig = s.pow(2) + damping
    ref = (vh.pow(2) / eig.unsqueeze(-1)).sum(1)  # (n, B): Σ_j Vh[j, i]² / eig_j
    cond = eig.max(1).values / eig.min(1).values
    return ref, cond


def _relerr(value: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((value.double() - ref) / ref).abs().max())


def _flat_layout(d: int, block):
    from wfexplore.params import AnalysedParameter, ParameterLayout

    param = AnalysedParameter("synthetic.weight", "synthetic", "Synthetic", (d,), 0)
    return ParameterLayout([param], block_size=block)


def _woodbury_inverse_diag(g: torch.Tensor, layout, lam: float) -> torch.Tensor:
    from wfexplore.curvature import from_gradients

    return from_gradients(g, layout, "woodbury").inverse_diag(lam)


def _p1_fast(g: torch.Tensor, layout, lam: float):
    """The fast exact path, warmed up once at full size (touching the memory it needs)."""
    from wfexplore.curvature import from_gradients

    warm = from_gradients(g, layout, "dense")
    warm.inverse_diag(lam)
    del warm
    gc.collect()
    fast, c_build = _timed(lambda: from_gradients(g, layout, "dense"))
    load_build = os.getloadavg()[0]
    fast_diag, c_inv = _timed(partial(fast.inverse_diag, lam))
    load_inv = os.getloadavg()[0]
    del fast
    gc.collect()
    print(f"[P1] fast path {(c_build + c_inv).wall:.2f} s (build {c_build.wall:.2f}, invert "
          f"{c_inv.wall:.2f})")  # fmt: skip
    return fast_diag, c_build, c_inv, load_build, load_inv


def _p1_woodbury(g: torch.Tensor, num_blocks: int, block: int, lam: float, args):
    """The Woodbury recursion: a pilot on evenly spread blocks, extrapolated linearly in the
    number of blocks; the full run is done when the pilot predicts it ends within the limit."""
    m = g.shape[0]
    pilot_n = min(num_blocks, args.woodbury_pilot_blocks)
    pilot = torch.linspace(0, num_blocks - 1, pilot_n).round().long().unique().tolist()
    pilot_n = len(pilot)
    pilot_cols = torch.cat([torch.arange(b * block, (b + 1) * block) for b in pilot])
    g_pilot = g[:, pilot_cols].contiguous()
    _woodbury_inverse_diag(g_pilot[: min(m, 20), : 4 * block], _flat_layout(4 * block, block), lam)
    wood_pilot, c_pilot = _timed(
        partial(_woodbury_inverse_diag, g_pilot, _flat_layout(pilot_n * block, block), lam)
    )
    load_pilot = os.getloadavg()[0]
    del g_pilot
    gc.collect()
    c_extrap = c_pilot.scaled(num_blocks / pilot_n)
    print(f"[P1] Woodbury pilot: {pilot_n} blocks in {c_pilot.wall:.2f} s → {c_extrap.wall:.1f} s")
    if pilot_n == num_blocks:
        return pilot, wood_pilot, c_pilot, load_pilot, wood_pilot, c_pilot, load_pilot
    if c_extrap.wall <= args.woodbury_full_limit:
        print("[P1] running the Woodbury recursion at full size…")
        layout = _flat_layout(num_blocks * block, block)
        wood_diag, c_wood = _timed(partial(_woodbury_inverse_diag, g, layout, lam))
        gc.collect()
        return pilot, wood_pilot, c_pilot, load_pilot, wood_diag, c_wood, os.getloadavg()[0]
    return pilot, wood_pilot, c_pilot, load_pilot, None, c_extrap, load_pilot


def run_p1(args, table: Table) -> dict:
    block, m, lam = 100, args.p1_samples, args.damping
    num_blocks = args.p1_dim // block
    d = num_blocks * block
    print(f"[P1] d={d:,} ({num_blocks} blocks of {block}), m={m}, λ={lam:g}; making gradients…")
    g, made = _timed(lambda: p1_gradients(num_blocks, block, m, lam, args.cond, args.seed))
    print(f"[P1] gradients made in {made.wall:.1f} s ({g.numel() * 4 / GB:.2f} GB float32)")
    layout = _flat_layout(d, block)

    fast_diag, c_build, c_inv, load_build, load_inv = _p1_fast(g, layout, lam)
    c_fast = c_build + c_inv
    pilot, wood_pilot, c_pilot, load_pilot, wood_diag, c_wood, load_wood = _p1_woodbury(
        g, num_blocks, block, lam, args
    )
    pilot_n = len(pilot)
    c_extrap = c_pilot.scaled(num_blocks / pilot_n)
    full_run = pilot_n == num_blocks or c_extrap.wall <= args.woodbury_full_limit
    # accuracy against the SVD reference, on blocks that the pilot covered too
    ref_n = min(args.ref_blocks, pilot_n)
    ref_pos = torch.linspace(0, pilot_n - 1, ref_n).round().long().unique().tolist()
    ref_blocks = [pilot[i] for i in ref_pos]
    (ref, cond), c_ref = _timed(lambda: p1_reference(g, ref_blocks, block, lam))
    fast_sel = torch.stack([fast_diag[b * block : (b + 1) * block] for b in ref_blocks])
    wood_sel = torch.stack([wood_pilot[i * block : (i + 1) * block] for i in ref_pos])
    err_fast, err_wood = _relerr(fast_sel, ref), _relerr(wood_sel, ref)
    if wood_diag is not None and pilot_n != num_blocks:
        full_sel = torch.stack([wood_diag[b * block : (b + 1) * block] for b in ref_blocks])
        err_wood = max(err_wood, _relerr(full_sel, ref))
    agree = None if wood_diag is None else _relerr(fast_diag, wood_diag.double())
    print(
        f"[P1] reference on {len(ref_blocks)} blocks in {c_ref.wall:.2f} s; dampened condition "
        f"min {cond.min():.4g} median {cond.median():.4g} max {cond.max():.4g}"
    )

    speedup = c_wood.wall / c_fast.wall
    shape = f"d={d:,} B={block} m={m} λ={lam:g}, float32 G"
    table.add("P1", "dense: from_gradients (GᵀG)", c_build, note=shape, load=load_build)
    table.add(
        "P1",
        "dense: inverse_diag (Cholesky)",
        c_inv,
        note=f"{num_blocks} blocks, float64",
        load=load_inv,
    )
    table.add(
        "P1",
        "dense fast path, total",
        c_fast,
        ratio=1.0,
        error=err_fast,
        goal="err ≤ 1e-5",
        met=err_fast <= 1e-5,
        note=f"error = max rel. err of diag(F⁻¹) vs SVD ref, {len(ref_blocks)} blocks",
        load=load_inv,
    )
    table.add(
        "P1",
        f"Woodbury recursion, pilot ({pilot_n} blocks)",
        c_pilot,
        ratio=c_extrap.wall / c_fast.wall,
        note=f"× {num_blocks}/{pilot_n} blocks → {c_extrap.wall:.1f} s extrapolated",
        load=load_pilot,
    )
    table.add(
        "P1",
        "Woodbury recursion" + (", full run" if full_run else ", EXTRAPOLATED"),
        c_wood,
        ratio=speedup,
        error=err_wood,
        goal="speedup ≥ 20",
        met=speedup >= 20,
        note="ratio = Woodbury s / fast s" + ("" if full_run else "; all times extrapolated"),
        load=load_wood,
    )
    table.add(
        "P1",
        "Woodbury / fast, CPU seconds",
        ratio=c_wood.cpu / c_fast.cpu,
        note="the same ratio in CPU time (less sensitive to other processes)",
    )
    if agree is not None:
        table.add("P1", "fast vs Woodbury, all weights", error=agree, note="max rel. difference")
    table.add(
        "P1",
        "dampened block condition (median)",
        ratio=float(cond.median()),
        note=f"measured on ref blocks: min {cond.min():.4g} max {cond.max():.4g}; "
        f"nominal {args.cond:g}",
    )
    return {"speedup": speedup, "maxrelerr": err_fast}


# --------------------------------------------------------------------------------------------
# P2: whole-layer low-rank blocks, in a fresh subprocess
# --------------------------------------------------------------------------------------------
def p2_child(m: int, damping: float, seed: int, width_div: int = 1) -> dict:
    """Runs in a fresh interpreter; returns timings, checks and its own peak RSS."""
    rss_torch = _rss_gb()  # this script imports only torch (and the standard library) at the top
    from wfexplore.curvature import from_gradients
    from wfexplore.params import AnalysedParameter, ParameterLayout

    rss_imports = _rss_gb()
    entries, offset = [], 0
    for module, (c_out, c_in, kh, kw) in RESNET20_STAGE_CONVS:
        shape = (c_out // width_div, c_in // width_div, kh, kw)  # width_div > 1: --quick only
        p = AnalysedParameter(f"{module}.weight", module, "Conv2d", shape, offset)
        entries.append(p)
        offset = p.stop
    layout = ParameterLayout(entries, block_size="layer")
    assert layout.dim == RESNET20_STAGE_WEIGHTS // width_div**2, layout.dim
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(m, layout.dim, generator=gen).mul_(1e-2)  # float32, no temporary copy
    w = torch.randn(layout.dim, generator=gen, dtype=torch.float64) * 0.05
    rss_inputs = _rss_gb()

    # warm-up on a small layout (kernels, thread pool), not on the measured sizes
    small = ParameterLayout([entries[0]], block_size="layer")
    from_gradients(g[:32, : small.dim], small, "lowrank").inverse_diag(damping)

    def build():
        curv = from_gradients(g, layout, "lowrank")
        curv.factors(damping)  # the Gram matrices and their Cholesky factors
        return curv

    curv, c_build = _timed(build)
    load_build = os.getloadavg()[0]
    inv_diag, c_diag = _timed(lambda: curv.inverse_diag(damping))
    load_diag = os.getloadavg()[0]

    def obs_update():
        """One OBS update in the largest layer, for q = its weight of least saliency."""
        blk = max(range(layout.num_blocks), key=lambda i: layout.blocks[i].size)
        b = layout.blocks[blk]
        saliency = w[b.start : b.stop].pow(2) / (2 * inv_diag[b.start : b.stop])
        q = int(saliency.argmin())
        column = curv.inverse_columns(blk, [q], damping)[:, 0]
        return b, q, column, -(w[b.start + q] / inv_diag[b.start + q]) * column

    (b, q, column, delta), c_obs = _timed(obs_update)
    load_obs = os.getloadavg()[0]
    rss_peak = _rss_gb()  # recorded before the accuracy check below allocates anything

    # checks (not timed): the update zeroes w_q; the column agrees with inverse_diag; and the
    # smallest layer's inverse diagonal against a dense float64 Cholesky inverse
    zeroed = float(abs(w[b.start + q] + delta[q]))
    column_vs_diag = float(abs(column[q] - inv_diag[b.start + q]) / inv_diag[b.start + q])
    small_blk = min(range(layout.num_blocks), key=lambda i: layout.blocks[i].size)
    sb = layout.blocks[small_blk]
    gs = g[:, sb.start : sb.stop].double()
    dense = gs.T @ gs / m
    dense.diagonal().add_(damping)
    ref = torch.cholesky_inverse(torch.linalg.cholesky(dense)).diagonal()
    err_small = _relerr(inv_diag[sb.start : sb.stop], ref)
    return {
        "d": layout.dim,
        "layers": [p.numel for p in layout.parameters],
        "m": m,
        "threads": torch.get_num_threads(),
        "c_build": c_build,
        "c_diag": c_diag,
        "c_obs": c_obs,
        "load_build": load_build,
        "load_diag": load_diag,
        "load_obs": load_obs,
        "rss_torch": rss_torch,
        "rss_imports": rss_imports,
        "rss_inputs": rss_inputs,
        "rss_peak": rss_peak,
        "held_gb": curv.memory_bytes() / GB,
        "obs_block": b.size,
        "obs_zeroed": zeroed,
        "column_vs_diag": column_vs_diag,
        "small_layer": sb.size,
        "err_small": err_small,
    }


def run_p2(args, table: Table) -> dict:
    m = args.p2_samples
    print(f"[P2] fresh subprocess: low-rank curvature, whole-layer blocks, m={m}…")
    cmd = [sys.executable, os.path.abspath(__file__), "--p2-child", f"--p2-samples={m}"]
    cmd += [f"--damping={args.damping}", f"--seed={args.seed}"]
    cmd += [f"--p2-width-div={args.p2_width_div}"]
    cmd += ["--omp-passive"] if args.omp_passive else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise RuntimeError(f"the P2 subprocess failed with exit code {proc.returncode}")
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GB
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = res["rss_peak"]
    layers = res["layers"]
    dense_gb = sum(n * n for n in layers) * 8 / GB
    g_gb = res["m"] * res["d"] * 4 / GB
    shape = f"d={res['d']:,} in {len(layers)} layers of {min(layers):,}–{max(layers):,}, m={m}"
    c_build, c_diag, c_obs = (Cost(*res[k]) for k in ("c_build", "c_diag", "c_obs"))
    c_total = c_build + c_diag + c_obs
    table.add(
        "P2",
        "lowrank: from_gradients (Gram+Chol)",
        c_build,
        note=shape,
        load=res["load_build"],
    )
    table.add(
        "P2",
        "lowrank: inverse_diag, all weights",
        c_diag,
        note="products in float64 (the default dtype)",
        load=res["load_diag"],
    )
    table.add(
        "P2",
        f"lowrank: one OBS update (layer {res['obs_block']:,})",
        c_obs,
        error=res["obs_zeroed"],
        note=f"error = |w_q+δw_q|; column vs inverse_diag rel. diff {res['column_vs_diag']:.1e}",
        load=res["load_obs"],
    )
    table.add(
        "P2",
        "lowrank: total (build+diag+OBS)",
        c_total,
        goal="≤ 15 s",
        met=c_total.wall <= 15,
        note=f"fresh subprocess, torch threads {res['threads']}",
        load=res["load_obs"],
    )
    table.add(
        "P2",
        "lowrank: inverse_diag accuracy",
        error=res["err_small"],
        note=f"layer of {res['small_layer']:,} vs dense float64 Cholesky inverse",
    )
    table.add(
        "P2",
        "peak RSS of the P2 subprocess",
        gb=peak,
        goal="≤ 3 GB",
        met=peak <= 3,
        note=f"raw VmHWM; after import torch {res['rss_torch']:.2f}, +wfexplore "
        f"{res['rss_imports']:.2f}, +G and w {res['rss_inputs']:.2f} (G = {g_gb:.2f} float32); "
        f"RUSAGE_CHILDREN {children_peak:.2f}",
    )
    table.add(
        "P2",
        "peak RSS minus import-torch baseline",
        gb=peak - res["rss_torch"],
        note=f"representation holds {res['held_gb']:.2f} (G + factors)",
    )
    table.add(
        "P2",
        "dense-equivalent Σ d_l² × 8 B",
        gb=dense_gb,
        note=f"{dense_gb / peak:.0f}× the measured peak",
    )
    return {"seconds": c_total.wall, "peak_gb": peak}


# --------------------------------------------------------------------------------------------
# P3: per-example gradients
# --------------------------------------------------------------------------------------------
def run_p3(args, table: Table) -> dict:
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from wfexplore.data import digits_datasets
    from wfexplore.gradients import gradient_samples
    from wfexplore.models import DigitsCNN
    from wfexplore.params import ParameterLayout

    n, reps = args.p3_examples, args.p3_repeats
    torch.manual_seed(args.seed)
    model = DigitsCNN().eval()
    layout = ParameterLayout.from_model(model)
    train, _ = digits_datasets(seed=args.seed)
    x, y = train.tensors[0][:n], train.tensors[1][:n]
    loader = DataLoader(TensorDataset(x, y), batch_size=n)
    params = [dict(model.named_parameters())[name] for name in layout.names]
    print(f"[P3] DigitsCNN (analysed d={layout.dim:,}), {n} digits examples, median of {reps}")

    def vmap_path():
        return gradient_samples(
            model, loader, layout, n, batch_size=1, chunk_size=256, progress=False
        )

    def loop_path():
        rows = []
        for i in range(n):
            loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
            grads = torch.autograd.grad(loss, params)
            rows.append(torch.cat([t.reshape(-1) for t in grads]))
        return torch.stack(rows)

    def batch_path():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        return torch.cat([p.grad.reshape(-1) for p in params])

    results, costs, loads = {}, {}, {}
    for name, fn in (("vmap", vmap_path), ("loop", loop_path), ("batch", batch_path)):
        fn()  # warm-up
        runs = []
        for _ in range(reps):
            out, cost = _timed(fn)
            runs.append(cost)
        results[name], loads[name] = out, os.getloadavg()[0]
        costs[name] = sorted(runs)[reps // 2]  # the run of median wall time
    times = {name: cost.wall for name, cost in costs.items()}
    diff = float((results["vmap"] - results["loop"]).abs().max())
    mean_diff = float((results["vmap"].mean(0) - results["batch"]).abs().max())
    scale = float(results["loop"].abs().max())
    ratio = times["loop"] / times["vmap"]
    table.add(
        "P3",
        "gradient_samples (torch.func vmap)",
        costs["vmap"],
        ratio=1.0,
        load=loads["vmap"],
        note=f"{n} per-example gradients, batch_size=1, chunk 256",
    )
    table.add(
        "P3",
        "Python loop of single backward passes",
        costs["loop"],
        ratio=ratio,
        load=loads["loop"],
        error=diff,
        goal="loop/vmap ≥ 5",
        met=ratio >= 5,
        note=f"error = max|vmap − loop| (largest entry {scale:.2g})",
    )
    table.add(
        "P3",
        "one batch gradient (mean loss .backward)",
        costs["batch"],
        ratio=times["batch"] / times["vmap"],
        load=loads["batch"],
        error=mean_diff,
        note="error = max|mean of vmap rows − batch gradient|",
    )
    return {"loop_ratio": ratio}


# --------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a < 30 s smoke test")
    parser.add_argument("--p1-dim", type=int, help="P1 d (default 270000; quick 5000)")
    parser.add_argument("--p1-samples", type=int, help="P1 m (default 1000; quick 120)")
    parser.add_argument("--p2-samples", type=int, help="P2 m (default 1000; quick 64)")
    parser.add_argument(
        "--p2-width-div",
        type=int,
        help="P2 divides every channel count by this (default 1: ResNet-20 itself; quick 2)",
    )
    parser.add_argument("--p3-examples", type=int, help="P3 examples (default 256; quick 64)")
    parser.add_argument("--p3-repeats", type=int, help="P3 timed repeats, median (default 3)")
    parser.add_argument("--damping", type=float, default=1e-5, help="λ (absolute)")
    parser.add_argument("--cond", type=float, default=1e6, help="P1 nominal block condition")
    parser.add_argument(
        "--ref-blocks", type=int, help="P1 blocks checked against the reference (64; quick 16)"
    )
    parser.add_argument(
        "--woodbury-pilot-blocks", type=int, default=270, help="P1 Woodbury pilot size"
    )
    parser.add_argument(
        "--woodbury-full-limit",
        type=float,
        default=90.0,
        help="run the Woodbury recursion at full size when the pilot predicts ≤ this many s",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--omp-passive",
        action="store_true",
        help="set OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep instead of spinning); "
        "batched LAPACK calls suffer badly from spinning when other processes share the cores",
    )
    parser.add_argument("--p2-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "p1_dim": 5_000 if quick else 270_000,
        "p1_samples": 120 if quick else 1000,
        "ref_blocks": 16 if quick else 64,
        "p2_samples": 64 if quick else 1000,
        "p2_width_div": 2 if quick else 1,
        "p3_examples": 64 if quick else 256,
        "p3_repeats": 3,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.p2_child:
        res = p2_child(args.p2_samples, args.damping, args.seed, args.p2_width_div)
        print(json.dumps(res))
        return
    start = time.perf_counter()
    print(
        f"bench_curvature {'--quick ' if args.quick else ''}| torch {torch.__version__} | "
        f"threads {torch.get_num_threads()} | cpus {os.cpu_count()} | {_cpu_name()} | "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')} | "
        f"load avg (1/5/15 min) {_load()}"
    )
    if args.quick:
        print("--quick: reduced sizes for a smoke test; the goals are meant for the full sizes")
    table = Table()
    # P2 first: its subprocess is forked from this process while it is still small
    p2 = run_p2(args, table)
    p1 = run_p1(args, table)
    gc.collect()
    p3 = run_p3(args, table)
    print()
    print(table.render())
    print()
    print(f"total {time.perf_counter() - start:.1f} s; load avg at the end {_load()}")
    loads = [row["load"] for row in table.rows if row["load"] is not None]
    if loads and max(loads) > (os.cpu_count() or 1):
        print(
            f"WARNING: the 1-minute load average reached {max(loads):.1f} on {os.cpu_count()} "
            "CPUs during the measurements: other processes shared the cores, so wall times "
            "(and ratios of them) are inflated and noisy; compare cpu_s, rerun on an idle "
            "machine, or try --omp-passive"
        )
    print(
        f"P1 speedup={p1['speedup']:.1f} maxrelerr={p1['maxrelerr']:.1e} "
        f"P2 seconds={p2['seconds']:.1f} peak_gb={p2['peak_gb']:.2f} "
        f"P3 loop_ratio={p3['loop_ratio']:.1f}"
    )


if __name__ == "__main__":
    main()
