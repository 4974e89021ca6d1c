r"""What a curvature will cost before it is computed: bytes and floating-point operations.

Per analysed parameter ℓ with d_ℓ weights in blocks of sizes s (Σ s = d_ℓ), m gradient
samples and 8-byte (float64) products:

===========  ===================================  =========================================
held as      bytes at its peak                    flops
===========  ===================================  =========================================
identity     0                                    0
diagonal     2 · 8 d_ℓ                            2 m d_ℓ
dense        4 · 8 Σ s² (blocks, inverse, the     2 m Σ s² (GᵀG) + Σ s³ (Cholesky and
             factorisation's two temporaries)     inverse)
woodbury     dense + G                            dense + 2 m Σ s² per λ (the recursion)
lowrank      G + 8 m² per block (factors)         (15/8) m² d_ℓ (Gram, L⁻¹G) + m³ per block
             + two m × c column buffers
kfac         4 · 8 (in² + out²) + unfolded        2 m T (in² + out²) + 9 (in³ + out³)
             patches of one slice (≤ 256 MB)
===========  ===================================  =========================================

G is the m × d matrix of gradient samples in the model's dtype (held by woodbury and
lowrank; streamed through, one chunk at a time, by the others). ``"auto"`` takes the
cheaper of dense and low-rank blocks by these flops among those that fit: low-rank when
m ≪ B, dense when B ≪ m.

Low-rank blocks keep their m × m factors while they total at most ``FACTOR_SHARE`` of the
budget (the first blocks in order; the others are recomputed from G when used, and their
flops count one recomputation, that of the weight update). Their G
may live in a file on disk (:mod:`.gradient_files`, ``gradient_store``): it then counts in
``disk_bytes``, not in the peak, which holds the file's read window instead. With
``gradient_store="auto"`` G goes to disk when the peak with G in memory is over the budget,
the peak with G on disk is not, and the folder has room for it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from wfexplore.curvature.base import COLUMN_CHUNK_BYTES
from wfexplore.curvature.gradient_files import (
    check_free_space,
    free_disk_bytes,
    store_folder,
    wants_disk,
    window_columns,
)
from wfexplore.gradients import DEFAULT_CHUNK_BYTES
from wfexplore.params import ParameterLayout

LOG = logging.getLogger("wfexplore")
MODEL_COPIES = 4
"""Private copies of the model a run may hold at once (gradients, the pruned copy, the dense
model for evaluation, a probe for per-layer losses)."""
VECTORS = 8
ACTIVATION_COPIES = 3
"""Activations a per-example backward pass keeps per example: outputs, their gradients, and
the work space of the vmapped products."""
"""d-long float64 vectors a pruning step holds (w, diag C⁻¹, scores, δw, C δw, masks…)."""

FLOAT64 = 8
SAFE_SHARE = 0.8
"""Share of the free memory that the default budget allows."""
FACTOR_SHARE = 0.5
"""Share of the budget that the kept Cholesky factors of low-rank blocks may take."""
AUTO_CHOICES = ("dense", "lowrank")


def block_sizes(layout: ParameterLayout, parameter: int) -> list[int]:
    """Sizes of the blocks that start in ``parameter``."""
    return [b.size for b in layout.blocks if b.layer == parameter]


def curvature_cost(
    representation: str, sizes: list[int], numel: int, num_samples: int
) -> tuple[int, float]:
    """(bytes, flops) of one parameter's blocks of ``sizes`` held as ``representation``
    (without G, which :func:`gradient_bytes` counts)."""
    m = num_samples
    squares, cubes = sum(s * s for s in sizes), sum(s**3 for s in sizes)
    if representation == "identity":
        return 0, 0.0
    if representation == "diagonal":
        return 2 * FLOAT64 * numel, 2.0 * m * numel
    if representation == "dense":
        return 4 * FLOAT64 * squares, 2.0 * m * squares + cubes
    if representation == "woodbury":
        return 4 * FLOAT64 * squares, 4.0 * m * squares + cubes
    if representation == "lowrank":
        held = FLOAT64 * m * m * len(sizes)  # one Cholesky factor per block
        return held, 15 / 8 * m * m * numel + float(m**3) * len(sizes)
    raise ValueError(f"representation {representation!r} has no cost model here")


def holds_gradients(representation: str) -> bool:
    """Whether the representation keeps the m × d gradient matrix G."""
    return representation in ("woodbury", "lowrank")


def gradient_bytes(num_samples: int, numel: int, itemsize: int) -> int:
    return num_samples * numel * itemsize


def block_work(num_samples: int, size: int) -> float:
    """Flops of one low-rank block of ``size`` weights: its Gram matrix, Cholesky factor and
    inverse diagonal, ≈ (9/4)m²s + m³/3."""
    return 2.25 * num_samples * num_samples * size + num_samples**3 / 3


def block_shares(layout: ParameterLayout, size: int, num_samples: int) -> list[range]:
    """The low-rank blocks each of ``size`` ranks owns under ``torch.distributed``:
    contiguous runs of about equal :func:`block_work`."""
    costs = [block_work(num_samples, b.size) for b in layout.blocks]
    total, shares, first, done = sum(costs), [], 0, 0.0
    for index, cost in enumerate(costs):
        done += cost
        while len(shares) < size - 1 and done >= total * (len(shares) + 1) / size:
            shares.append(range(first, index + 1))
            first = index + 1
    shares.append(range(first, layout.num_blocks))
    while len(shares) < size:
        shares.append(range(layout.num_blocks, layout.num_blocks))
    return shares


def column_span(layout: ParameterLayout, blocks: range) -> tuple[int, int]:
    """The first flat column of ``blocks`` (contiguous) and how many columns they cover."""
    if not blocks:
        return 0, 0
    first = layout.blocks[blocks.start].start
    return first, layout.blocks[blocks.stop - 1].stop - first


def largest_share(layout: ParameterLayout, size: int, num_samples: int) -> tuple[float, float]:
    """The largest fractions of the columns and of the low-rank work that one of ``size``
    ranks gets from :func:`block_shares` (1/size each when the blocks divide evenly)."""
    shares = block_shares(layout, size, num_samples)
    work = [block_work(num_samples, b.size) for b in layout.blocks]
    columns = max(column_span(layout, share)[1] for share in shares) / layout.dim
    return columns, max(sum(work[i] for i in share) for share in shares) / sum(work)


def rank_gradient_bytes(
    representation: str, num_samples: int, numel: int, itemsize: int, world_size: int = 1,
    hold: bool = False, widest: float | None = None,
) -> int:  # fmt: skip
    """Bytes of G (m × ``numel``) one rank holds at its peak: all of it, in one process or
    for the Woodbury recursion (all-gathered); low-rank blocks shared out over w ranks: the
    rank's m/w rows beside every rank's rows in the columns of its blocks (the ``widest``
    share of them, :func:`largest_share`; 1/w by default), ≈ 2md/w; rows held for a sweep
    (``hold``) with other representations: the rank's m/w."""
    whole = gradient_bytes(num_samples, numel, itemsize)
    if world_size == 1 or representation == "woodbury":
        return whole
    if representation == "lowrank":
        widest = 1 / world_size if widest is None else widest
        return -(-whole // world_size) + math.ceil(whole * widest)
    return -(-whole // world_size) if hold else 0


def buffer_bytes(representation: str, layout: ParameterLayout, num_samples: int) -> int:
    """Low-rank blocks work through two float64 column buffers of m × c (c ≤ the largest block,
    and m·c·8 ≤ ``COLUMN_CHUNK_BYTES``); the others hold none."""
    if representation != "lowrank" or not num_samples:
        return 0
    largest = max(b.size for b in layout.blocks)
    columns = max(1, min(COLUMN_CHUNK_BYTES // (FLOAT64 * num_samples), largest))
    return 2 * FLOAT64 * num_samples * columns


def window_bytes(num_samples: int, dim: int, itemsize: int) -> int:
    """The read window of a gradient file: m × :func:`~.gradient_files.window_columns` entries."""
    return num_samples * window_columns(num_samples, dim, itemsize) * itemsize


def factor_budget_bytes(budget_bytes: float) -> int:
    """Bytes that the kept Cholesky factors of low-rank blocks may take (``FACTOR_SHARE``)."""
    return int(FACTOR_SHARE * budget_bytes)


def kept_factor_blocks(layout: ParameterLayout, num_samples: int, budget_bytes: float) -> int:
    """How many low-rank blocks (the first ones) keep their 8m²-byte factor within the budget."""
    each = FLOAT64 * num_samples * num_samples
    return min(layout.num_blocks, factor_budget_bytes(budget_bytes) // each) if each else 0


def lowrank_bytes(
    layout: ParameterLayout, num_samples: int, itemsize: int, budget_bytes: float, on_disk: bool,
    world_size: int = 1,
) -> int:  # fmt: skip
    """What low-rank blocks hold at their peak on one of ``world_size`` ranks: G unless it is
    on disk (:func:`rank_gradient_bytes`), the kept factors, the column buffers and, for G on
    disk, the file's read window."""
    m, d = num_samples, layout.dim
    in_memory = rank_gradient_bytes("lowrank", m, d, itemsize, world_size,
                                    widest=_widest(layout, world_size, m))  # fmt: skip
    held = window_bytes(m, d, itemsize) if on_disk else in_memory
    factors = FLOAT64 * m * m * kept_factor_blocks(layout, m, budget_bytes)
    return held + factors + buffer_bytes("lowrank", layout, m)


def gradients_on_disk(
    gradient_store,
    layout: ParameterLayout,
    num_samples: int,
    itemsize: int,
    budget_bytes: float,
    other_bytes: int = 0,
    world_size: int = 1,
) -> bool:
    """Whether low-rank blocks write G to disk: asked for (``"disk"`` or a folder), or, with
    ``"auto"``, when ``other_bytes`` plus what they hold (on one of ``world_size`` ranks) is
    over the budget with G in memory, within it with G on disk, and the folder has room for
    G."""
    if gradient_store != "auto":
        return wants_disk(gradient_store)
    m = num_samples
    if not m:
        return False
    in_memory, on_disk = (
        other_bytes + lowrank_bytes(layout, m, itemsize, budget_bytes, disk, world_size)
        for disk in (False, True)
    )
    if in_memory <= budget_bytes or on_disk > budget_bytes:
        return False
    widest = _widest(layout, world_size, m)
    needed = rank_gradient_bytes("lowrank", m, layout.dim, itemsize, world_size, widest=widest)
    return needed <= free_disk_bytes(store_folder("auto"))


def _widest(layout: ParameterLayout, world_size: int, num_samples: int) -> float | None:
    if world_size == 1 or not num_samples:
        return None
    return largest_share(layout, world_size, num_samples)[0]


def refactor_flops(num_samples: int, size: int) -> float:
    """Flops of making a low-rank block's factor again: its Gram G_B G_Bᵀ over the rows on and
    below the diagonal and its Cholesky, (5/4)m²s + m³/3."""
    m = num_samples
    return 1.25 * m * m * size + m**3 / 3


def auto_representation(layout: ParameterLayout, num_samples: int, budget_bytes: float) -> str:
    """Dense or low-rank blocks, whichever needs fewer flops among those within the budget
    (dense blocks when nothing is known of m). Low-rank blocks are judged as they run: the
    factors kept within ``FACTOR_SHARE`` of the budget, the others recomputed (one Gram and
    Cholesky more each, (5/4)m²s + m³/3 flops), and G in memory when it fits, else on disk
    (its read window held)."""
    m = num_samples
    dense_bytes, dense_flops = 0, 0.0
    for i, p in enumerate(layout.parameters):
        b, f = curvature_cost("dense", block_sizes(layout, i), p.numel, m)
        dense_bytes, dense_flops = dense_bytes + b, dense_flops + f
    lowrank_flops = sum(
        curvature_cost("lowrank", block_sizes(layout, i), p.numel, m)[1]
        for i, p in enumerate(layout.parameters)
    )
    kept = kept_factor_blocks(layout, m, budget_bytes)
    lowrank_flops += sum(refactor_flops(m, b.size) for b in layout.blocks[kept:])
    in_memory = lowrank_bytes(layout, m, 4, budget_bytes, on_disk=False)
    on_disk = lowrank_bytes(layout, m, 4, budget_bytes, on_disk=True)
    costs = {
        "dense": (dense_bytes <= budget_bytes, dense_flops),
        "lowrank": (min(in_memory, on_disk) <= budget_bytes, lowrank_flops),
    }
    fitting = [r for r in AUTO_CHOICES if costs[r][0]] or list(AUTO_CHOICES)
    return min(fitting, key=lambda r: costs[r][1])


def available_bytes(device: torch.device | str = "cpu") -> int:
    """Free memory on ``device``: CUDA's free memory, else the system's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_budget_gb(device: torch.device | str = "cpu") -> float:
    """A safe share (``SAFE_SHARE``) of the free memory of ``device``, in GB (2³⁰ bytes)."""
    return SAFE_SHARE * available_bytes(device) / 2**30


@dataclass
class Plan:
    """What a run will hold and compute; ``layers`` has one row per analysed parameter.

    ``gradient_store`` says where G is held: ``"memory"``, or the disk store (``"disk"`` or a
    folder) writing ``disk_bytes`` into ``gradient_folder``. ``disk_alternative``, for a plan
    over the budget, is the plan of low-rank blocks with G on disk when that one would fit.
    ``evaluations`` counts the passes over the evaluation data the run makes after the
    curvature (the dense and the pruned model, one per layer for per-layer losses).
    """

    layers: pd.DataFrame
    method: str
    representation: str
    num_samples: int
    fixed_bytes: int
    peak_bytes: int
    budget_bytes: int
    disk_bytes: int = 0
    gradient_store: str | os.PathLike = "memory"
    gradient_folder: Path | None = None
    disk_alternative: Plan | None = None
    evaluations: int = 0

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.budget_bytes

    def summary(self) -> str:
        """One line: the method, the representation, the peak against the budget, the flops,
        the bytes of G on disk when it is there, and the evaluation passes."""
        flops = float(self.layers["flops"].sum())
        disk = f", G on disk: {_gb(self.disk_bytes)} in {self.gradient_folder}"
        passes = f", {self.evaluations} evaluation passes"
        return (
            f"plan: {self.method} with {self.representation} curvature, m={self.num_samples}, "
            f"{len(self.layers)} layers, d={int(self.layers['numel'].sum()):,}: peak "
            f"≈ {_gb(self.peak_bytes)} of max_memory_gb={_gb(self.budget_bytes, unit=False)}, "
            f"≈ {flops:.2g} flops{disk if self.disk_bytes else ''}"
            f"{passes if self.evaluations else ''}"
        )

    def check(self) -> Plan:
        """Refuse a plan over the budget, naming ``max_memory_gb``, the estimate and what fits;
        and a gradient store on disk that its folder has no room for."""
        if not self.fits:
            raise MemoryError(
                f"{self.summary()} — over the budget; {self.suggestions()} (or raise "
                "max_memory_gb if the machine has the memory)"
            )
        if self.disk_bytes:
            check_free_space(self.gradient_folder, self.disk_bytes)
        return self

    def suggestions(self) -> str:
        """Settings that would fit: fewer samples, fewer or smaller blocks, low-rank blocks,
        the gradient store on disk."""
        out = []
        held = int(self.layers["gradient_bytes"].sum())
        curvature = int(self.layers["curvature_bytes"].sum())
        room = self.budget_bytes - self.fixed_bytes - curvature
        if held and room > 0:
            out.append(f"num_samples ≤ {int(room // (held / self.num_samples))}")
        if self.disk_alternative is not None:
            alt = self.disk_alternative
            low_rank = "" if self.representation == "lowrank" else "representation='lowrank', "
            out.append(
                f"{low_rank}gradient_store={alt.gradient_store!r} (peak ≈ {_gb(alt.peak_bytes)}, "
                f"with G's {_gb(alt.disk_bytes)} on disk in {alt.gradient_folder})"
            )
        elif self.representation == "dense":
            out.append("representation='lowrank' or a smaller block_size")
        if self.representation == "lowrank" and curvature > 0.1 * self.budget_bytes:
            out.append("block_size='layer' (fewer low-rank blocks hold fewer m × m factors)")
        return "try " + ", or ".join(out) if out else "select fewer layers (names=[...])"

    def __str__(self) -> str:
        return self.summary()


def cheapest_fitting(plans: dict[str, Plan]) -> str:
    """The representation of the plan (dense or low-rank blocks, ``AUTO_CHOICES``) with the
    fewest flops among those whose whole peak (model copies, gradient chunks, activations,
    curvature) fits the budget; among all of them when none fits (it is then refused)."""
    fitting = [r for r in AUTO_CHOICES if plans[r].fits] or list(AUTO_CHOICES)
    return min(fitting, key=lambda r: float(plans[r].layers["flops"].sum()))


def plan_curvature(
    layout: ParameterLayout,
    representation: str,
    num_samples: int,
    *,
    itemsize: int,
    model_bytes: int,
    budget_gb: float,
    method: str | None = None,
    hold_gradients: bool = False,
    activation_bytes: int = 0,
    batch_size: int = 1,
    gradient_store="auto",
    evaluations: int = 0,
    world_size: int = 1,
) -> Plan:
    """The plan of one curvature on ``layout``: per-layer bytes and flops, and the peak of a
    run that holds it (``model_bytes`` of parameters, copied ``MODEL_COPIES`` times; one chunk
    of per-example gradients of ``itemsize``-byte entries; the float64 d-vectors).
    ``hold_gradients``: G is held in memory whatever the representation (a sweep shares it).
    ``activation_bytes`` (of one example, see :func:`activation_bytes_of`) counts what the
    per-example gradients of one chunk keep alive (``ACTIVATION_COPIES`` per example).
    ``gradient_store`` (``"auto"``, ``"memory"``, ``"disk"`` or a folder) places the G of
    low-rank blocks (:func:`gradients_on_disk`); ``evaluations`` passes over the evaluation
    data follow. Under ``torch.distributed`` the plan is one rank's of ``world_size``: its
    share of G (:func:`rank_gradient_bytes`) and, for low-rank blocks shared out, its share
    of the flops."""
    options = {
        "itemsize": itemsize,
        "model_bytes": model_bytes,
        "budget_bytes": int(budget_gb * 2**30),
        "method": method or representation,
        "hold": hold_gradients,
        "activation_bytes": activation_bytes,
        "batch_size": batch_size,
        "world_size": world_size,
    }
    result = _plan(layout, representation, num_samples, gradient_store, **options)
    if not result.fits and num_samples and not hold_gradients and representation in (
        "dense", "woodbury", "lowrank"
    ):  # fmt: skip
        store = gradient_store if wants_disk(gradient_store) else "disk"
        alt = _plan(layout, "lowrank", num_samples, store, **options)
        if alt.fits and alt.disk_bytes <= free_disk_bytes(alt.gradient_folder):
            result.disk_alternative = alt
    result.evaluations = evaluations
    LOG.info(result.summary())
    return result


def _plan(layout, representation, m, gradient_store, *, budget_bytes, hold, **options) -> Plan:
    itemsize, world = options["itemsize"], options["world_size"]
    base = _base_bytes(layout, m, **options)
    on_disk = (
        representation == "lowrank"
        and not hold
        and gradients_on_disk(gradient_store, layout, m, itemsize, budget_bytes, base, world)
    )
    rows = _layer_rows(layout, representation, m, itemsize, hold, on_disk, budget_bytes, world)
    layers = pd.DataFrame(rows)
    fixed = base + buffer_bytes(representation, layout, m)
    fixed += window_bytes(m, layout.dim, itemsize) if on_disk else 0
    peak = fixed + int(layers["gradient_bytes"].sum() + layers["curvature_bytes"].sum())
    store = (gradient_store if wants_disk(gradient_store) else "disk") if on_disk else "memory"
    return Plan(
        layers,
        options["method"],
        representation,
        m,
        fixed,
        peak,
        budget_bytes,
        disk_bytes=int(layers["disk_bytes"].sum()),
        gradient_store=store,
        gradient_folder=store_folder(store) if on_disk else None,
    )


def _base_bytes(layout, m, *, itemsize, model_bytes, activation_bytes, batch_size, **_) -> int:
    """What every run holds besides its curvature: the model's copies, one chunk of
    per-example gradients with the activations behind it, the float64 d-vectors."""
    chunk = 0
    if m:
        per_chunk = max(1, min(256, DEFAULT_CHUNK_BYTES // (layout.dim * itemsize)))
        examples = min(per_chunk, m) * batch_size
        chunk = 2 * min(per_chunk, m) * layout.dim * itemsize
        chunk += ACTIVATION_COPIES * examples * activation_bytes
    return MODEL_COPIES * model_bytes + chunk + VECTORS * FLOAT64 * layout.dim


def _layer_rows(layout, representation, m, itemsize, hold, on_disk, budget_bytes, world) -> list:
    """One row per parameter (on one of ``world`` ranks); low-rank blocks keep the factors of
    the first :func:`kept_factor_blocks` blocks and recompute the others."""
    held = hold or holds_gradients(representation)
    kept = kept_factor_blocks(layout, m, budget_bytes) if representation == "lowrank" else 0
    widest, busiest = (
        largest_share(layout, world, m) if representation == "lowrank" and world > 1 and m
        else (None, 1.0)
    )  # fmt: skip
    where = "gradient store on disk" if on_disk else "in memory"
    rows = []
    for i, p in enumerate(layout.parameters):
        sizes = block_sizes(layout, i)
        curvature, flops = _layer_cost(representation, p, sizes, m)
        gradients = (
            rank_gradient_bytes(representation, m, p.numel, itemsize, world, hold, widest)
            if held
            else 0
        )
        row = {
            "parameter": p.name,
            "numel": p.numel,
            "blocks": len(sizes),
            "largest_block": max(sizes, default=0),
            "gradient_bytes": 0 if on_disk else gradients,
            "disk_bytes": gradients if on_disk else 0,
            "curvature_bytes": curvature,
            "flops": flops,
            "strategy": where if held else "streamed by example chunk",
        }
        if representation == "lowrank":
            keep = min(len(sizes), kept)
            kept -= keep
            row["curvature_bytes"] = FLOAT64 * m * m * keep
            if keep < len(sizes):
                row["strategy"] += f", {len(sizes) - keep} factors recomputed"
                row["flops"] += sum(refactor_flops(m, s) for s in sizes[keep:])
            row["flops"] *= busiest  # the busiest rank's share of the blocks' work
        rows.append(row)
    return rows


def _layer_cost(representation: str, p, sizes: list[int], m: int) -> tuple[int, float]:
    if representation != "kfac":
        return curvature_cost(representation, sizes, p.numel, m)
    out = p.shape[0]
    inner = p.numel // out
    curvature = 4 * FLOAT64 * (inner * inner + out * out)
    return curvature, 2.0 * m * (inner * inner + out * out) + 9.0 * (inner**3 + out**3)


def _gb(n: int, unit: bool = True) -> str:
    return f"{n / 2**30:.3g}" + (" GB" if unit else "")


def activation_bytes_of(model: torch.nn.Module, example: torch.Tensor) -> int:
    """Bytes of every leaf module's output for one example (a forward pass without grad on
    ``example[:1]``, hooks removed afterwards)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        outputs = output if isinstance(output, tuple | list) else (output,)
        total += sum(o.numel() * o.element_size() for o in outputs if isinstance(o, torch.Tensor))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1].to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return total


def first_input(data) -> torch.Tensor | None:
    """One example's inputs, with a batch dimension: a tensor is its own input; a loader over a
    dataset gives its first item, and any other re-iterable its first batch, read with the
    random state saved and restored (a shuffling loader's later order is not changed). A
    one-shot iterator is not read (None), nor a batch without tensor inputs."""
    if data is None or isinstance(data, torch.Tensor):
        return data
    dataset = getattr(data, "dataset", None)
    if dataset is not None and hasattr(dataset, "__getitem__"):
        try:
            item = dataset[0]
        except (IndexError, KeyError, TypeError):
            item = None
        x = item[0] if isinstance(item, tuple | list) and item else item
        if isinstance(x, torch.Tensor):
            return x.unsqueeze(0)
    if iter(data) is data:
        return None
    with torch.random.fork_rng(devices=[]):
        batch = next(iter(data), None)
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    return None
