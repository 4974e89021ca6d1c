"""Low-rank Fisher blocks through the Gram side of the Woodbury identity (the M-FAC idea).

For a block B with gradient columns G_B ∈ R^{m×|B|}, M_B = G_BᵀG_B/m and
K_B = mλI + G_B G_Bᵀ (m×m):

    (λI + G_BᵀG_B/m)⁻¹ = λ⁻¹[I − G_Bᵀ K_B⁻¹ G_B],
    [F_λ⁻¹]_qq = λ⁻¹(1 − ‖L_B⁻¹ g_q‖²)  with K_B = L_B L_Bᵀ and g_q column q of G_B.

Only G (m×d, kept in the gradients' dtype, in memory or in a file on disk:
:mod:`.gradient_files`) and, for the last λ asked for, m×m Cholesky factors are held, so
blocks can be whole layers or the whole model: O(m·d) memory, never |B|². The factors are
kept while they total at most ``max_factor_bytes`` (8m² bytes each in float64, the first
blocks asked for, held in slabs: :class:`KeptFactors`); the factor of a block beyond that
is recomputed from G whenever it is needed (one pass over the block's columns,
≈ (5/4)m²|B| + m³/3 flops), with the same numbers.
Products with G_B run in ``dtype`` (float64 by default) over column chunks. The two
O(m²d) products, G_B G_Bᵀ and L_B⁻¹ G_B, skip the blocks of rows that symmetry or
triangularity make redundant, about 5/8 of the work of plain matrix products.

Under ``torch.distributed`` the blocks are shared out (:func:`block_shares`): each rank holds
the m rows of G only in the columns of its own blocks (d / world_size of them), with their
factors; the ranks answer every question together (see :class:`LowRankCurvature`).
"""

from __future__ import annotations

import torch

from wfexplore.curvature.base import (
    COLUMN_CHUNK_BYTES,
    DISPLAY_BLOCK_LIMIT,
    Curvature,
    Positions,
)
from wfexplore.curvature.dense import DEFAULT_MAX_MEMORY_GB
from wfexplore.curvature.gradient_files import (
    WINDOW_BYTES,
    GradientFile,
    HeldGradients,
    check_gradient_store,
    wants_disk,
)
from wfexplore.curvature.plan import (
    block_shares,
    column_span,
    factor_budget_bytes,
    gradients_on_disk,
)
from wfexplore.distributed import Ranks
from wfexplore.params import ParameterLayout


class LowRankCurvature(Curvature):
    """M = GᵀG/m per block, represented by G; (M + λI)⁻¹ through K_B = mλI + G_B G_Bᵀ.

    ``gradients`` is G: a (m, d) tensor, or G held by :mod:`.gradient_files` (in memory, or a
    :class:`~.gradient_files.GradientFile` on disk); ``self.gradients`` is what was given.
    ``max_factor_bytes`` (None: no limit) bounds the kept Cholesky factors.

    With ``ranks`` and ``shares`` (the blocks each rank owns, :func:`block_shares`),
    ``gradients`` holds only the columns of this rank's blocks, and every operation is a
    collective: each rank answers for its blocks, and whole vectors (``diag``, ``mv``,
    ``inverse_diag``, ``inverse_mv``) are all-reduced while a block's columns come from its
    owner by broadcast. Every rank must then ask the same questions in the same order, as the
    pruning functions do.
    """

    kind = "lowrank"
    requires_damping = True

    def __init__(
        self,
        layout: ParameterLayout,
        gradients: torch.Tensor | HeldGradients | GradientFile,
        *,
        dtype: torch.dtype = torch.float64,
        max_factor_bytes: int | None = None,
        ranks: Ranks | None = None,
        shares: list[range] | None = None,
    ):
        super().__init__(layout)
        if (ranks is None) != (shares is None):
            raise ValueError("ranks and shares: give both (blocks shared out) or neither")
        self.ranks = ranks
        self.owned = range(layout.num_blocks) if shares is None else shares[ranks.rank]
        self._owner = [0] * layout.num_blocks
        for rank, share in enumerate(shares or []):
            for block in share:
                self._owner[block] = rank
        self._blocks = [layout.blocks[i] for i in self.owned]
        self._first, width = column_span(layout, self.owned)
        if len(gradients.shape) != 2 or gradients.shape[1] != width:
            raise ValueError(
                f"gradients: expected shape (m, {width}), got {tuple(gradients.shape)}"
            )
        self.gradients = gradients
        self._source = (
            HeldGradients(gradients) if isinstance(gradients, torch.Tensor) else gradients
        )
        self.num_samples = gradients.shape[0]
        self.dtype = dtype
        self.max_factor_bytes = max_factor_bytes
        largest = max((b.size for b in self._blocks), default=1)
        self._columns = max(1, min(COLUMN_CHUNK_BYTES // (8 * self.num_samples), largest))
        self._buffers = [
            torch.empty(self.num_samples, self._columns, dtype=dtype, device=self.device)
            for _ in range(2)
        ]
        self._factor_damping: float | None = None
        m = self.num_samples
        each = m * m * dtype.itemsize
        room = len(self.owned) if max_factor_bytes is None else max_factor_bytes // each
        self._kept = KeptFactors(min(len(self.owned), room), (m, m), dtype, self.device)

    @property
    def device(self) -> torch.device:
        return self._source.device

    # --- forward ---------------------------------------------------------------------------
    def diag(self) -> torch.Tensor:
        def fill(out: torch.Tensor) -> None:
            for b in self._blocks:
                for start, stop in self._column_chunks(b.start, b.stop):
                    out[start:stop] = self._cols(start, stop).pow(2).sum(0) / self.num_samples

        return self._whole(fill)

    def mv(self, vector: torch.Tensor) -> torch.Tensor:
        vector = vector.to(dtype=self.dtype, device=self.device)

        def fill(out: torch.Tensor) -> None:
            for b in self._blocks:
                gv = self._times(b.start, b.stop, vector[b.start : b.stop, None])
                part = out[b.start : b.stop].unsqueeze(1)  # a view: written in place
                self._transpose_times(b.start, b.stop, gv / self.num_samples, part)

        return self._whole(fill)

    def columns(self, block: int, positions: Positions) -> torch.Tensor:
        b = self.layout.blocks[block]
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.device)

        def owned() -> torch.Tensor:
            chosen = self._select(b.start + positions)  # (m, k)
            cols = torch.empty(b.size, len(positions), dtype=self.dtype, device=self.device)
            self._transpose_times(b.start, b.stop, chosen / self.num_samples, cols)
            return cols

        return self._answered(block, owned, (b.size, len(positions)))

    def block(self, index: int) -> torch.Tensor:
        b = self.layout.blocks[index]
        if b.size > DISPLAY_BLOCK_LIMIT:
            raise ValueError(
                f"block {index} has {b.size} weights; a dense copy is only made for blocks of at "
                f"most {DISPLAY_BLOCK_LIMIT}; use a layout with a smaller block_size for display"
            )

        def owned() -> torch.Tensor:
            g = torch.empty(self.num_samples, b.size, dtype=self.dtype, device=self.device)
            self._source.read(b.start - self._first, b.stop - self._first, g)
            return g.T @ g / self.num_samples

        return self._answered(index, owned, (b.size, b.size))

    # --- inverse ---------------------------------------------------------------------------
    def _inverse_diag(self, damping: float) -> torch.Tensor:
        def fill(out: torch.Tensor) -> None:
            eye = torch.eye(self.num_samples, dtype=self.dtype, device=self.device)
            for b in self._blocks:
                chol_inv = torch.linalg.solve_triangular(
                    self.factor(b.index, damping), eye, upper=False
                )
                for start, stop in self._column_chunks(b.start, b.stop):
                    w = _lower_times(chol_inv, self._cols(start, stop), self._buffers[1])
                    out[start:stop] = (1.0 - w.square_().sum(0)) / damping

        return self._whole(fill)

    def _inverse_mv(self, vector: torch.Tensor, damping: float) -> torch.Tensor:
        vector = vector.to(dtype=self.dtype, device=self.device)

        def fill(out: torch.Tensor) -> None:
            for b in self._blocks:
                v = vector[b.start : b.stop]
                gv = self._times(b.start, b.stop, v[:, None])
                s = torch.cholesky_solve(gv, self.factor(b.index, damping))
                gts = torch.empty(b.size, 1, dtype=self.dtype, device=self.device)
                self._transpose_times(b.start, b.stop, s, gts)
                out[b.start : b.stop] = (v - gts[:, 0]) / damping

        return self._whole(fill)

    def _inverse_columns(self, block: int, positions: Positions, damping: float) -> torch.Tensor:
        b = self.layout.blocks[block]
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.device)

        def owned() -> torch.Tensor:
            chosen = self._select(b.start + positions)  # (m, k)
            s = torch.cholesky_solve(chosen, self.factor(block, damping))
            cols = torch.empty(b.size, len(positions), dtype=self.dtype, device=self.device)
            self._transpose_times(b.start, b.stop, -s, cols)
            cols[positions, torch.arange(len(positions), device=cols.device)] += 1.0
            return cols / damping

        return self._answered(block, owned, (b.size, len(positions)))

    def memory_bytes(self) -> int:
        return self._source.memory_bytes() + self._kept.memory_bytes()

    def factor(self, block: int, damping: float) -> torch.Tensor:
        """The Cholesky factor L_B of K_B = mλI + G_B G_Bᵀ for block ``block``: kept for the
        last λ asked for while the kept ones fit in ``max_factor_bytes``, else recomputed
        (only for this rank's own blocks when they are shared out)."""
        if self.ranks is not None and block not in self.owned:
            raise ValueError(
                f"block {block}: its gradient columns are held by rank {self._owner[block]}, "
                f"not by rank {self.ranks.rank}; ask for its factor there"
            )
        lam = self.absolute_damping(damping)
        if lam != self._factor_damping:
            self._kept.clear()  # one λ at a time
            self._factor_damping = lam
        chol = self._kept.get(block)
        if chol is None:
            b = self.layout.blocks[block]
            gram = self._gram(b.start, b.stop)
            gram.diagonal().add_(self.num_samples * lam)
            chol = torch.linalg.cholesky(gram)
            chol = self._kept.keep(block, chol)
        return chol

    def factors(self, damping: float) -> dict[int, torch.Tensor]:
        """Every (own) block's factor for λ computed once; those kept (block → L_B)."""
        for b in self._blocks:
            self.factor(b.index, damping)
        return self._kept.as_dict()

    def close(self) -> None:
        """Drop the kept factors and release G's store (a gradient file is removed unless it
        was made with ``keep=True``)."""
        self._kept.release()
        self._source.close()

    # --- helpers -------------------------------------------------------------------------
    def _whole(self, fill) -> torch.Tensor:
        """A length-d vector that ``fill(out)`` writes for this rank's blocks, zeros elsewhere,
        summed over the ranks (once every rank's ``fill`` has succeeded)."""
        out = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        if self.ranks is None:
            fill(out)
            return out
        self.ranks.together(lambda: fill(out), "low-rank curvature")
        return self.ranks.sum_(out)

    def _answered(self, block: int, owned, shape: tuple[int, int]) -> torch.Tensor:
        """``owned()``, computed by the rank that holds ``block`` and broadcast to the others."""
        if self.ranks is None:
            return owned()
        owner = self._owner[block]

        def placeholder() -> torch.Tensor:
            return torch.empty(shape, dtype=self.dtype, device=self.device)

        work = owned if owner == self.ranks.rank else placeholder
        out = self.ranks.together(work, f"low-rank curvature, block {block}")
        return self.ranks.broadcast_(out, owner)

    def _select(self, columns: torch.Tensor) -> torch.Tensor:
        """G[:, columns] in ``dtype`` on the device."""
        held = self._source.select(columns - self._first)
        return held.to(dtype=self.dtype, device=self.device)

    def _gram(self, start: int, stop: int) -> torch.Tensor:
        m = self.num_samples
        gram = torch.zeros(m, m, dtype=self.dtype, device=self.device)
        for a, z in self._column_chunks(start, stop):
            gram += _gram(self._cols(a, z))
        return gram

    def _times(self, start: int, stop: int, v: torch.Tensor) -> torch.Tensor:
        """G[:, start:stop] v for a (stop − start, k) matrix v: (m, k)."""
        out = torch.zeros(self.num_samples, v.shape[1], dtype=self.dtype, device=v.device)
        for a, z in self._column_chunks(start, stop):
            out += self._cols(a, z) @ v[a - start : z - start]
        return out

    def _transpose_times(self, start: int, stop: int, s: torch.Tensor, out: torch.Tensor) -> None:
        """out = G[:, start:stop]ᵀ s for a (m, k) matrix s, written into ``out``."""
        for a, z in self._column_chunks(start, stop):
            out[a - start : z - start] = self._cols(a, z).T @ s

    def _cols(self, start: int, stop: int) -> torch.Tensor:
        """G[:, start:stop] in ``dtype``, in a reused buffer (valid until the next call)."""
        cols = self._buffers[0][:, : stop - start]
        self._source.read(start - self._first, stop - self._first, cols)
        return cols

    def _column_chunks(self, start: int, stop: int):
        for a in range(start, stop, self._columns):
            yield a, min(a + self._columns, stop)


SLAB_BYTES = 256 * 2**20


class KeptFactors:
    """Up to ``capacity`` equal-shaped factors, copied into slabs of at most ``SLAB_BYTES``
    allocated as they fill (the last one sized to what is left of the capacity).

    Kept apart from the same-sized temporaries that make them, the kept factors cannot pin
    freed heap pages between them: held one tensor each, 512 KB factors grow the resident
    memory by about twice what they hold.
    """

    def __init__(self, capacity: int, shape: tuple[int, int], dtype, device):
        self.capacity, self.shape, self.dtype, self.device = capacity, shape, dtype, device
        self.per_slab = max(1, SLAB_BYTES // max(1, shape[0] * shape[1] * dtype.itemsize))
        self._slabs: list[torch.Tensor] = []
        self._where: dict[int, torch.Tensor] = {}

    def get(self, block: int) -> torch.Tensor | None:
        return self._where.get(block)

    def keep(self, block: int, factor: torch.Tensor) -> torch.Tensor:
        """``factor``'s kept copy, or ``factor`` itself when the capacity is used up."""
        slot = len(self._where)
        if slot >= self.capacity:
            return factor
        slab, row = divmod(slot, self.per_slab)
        if slab == len(self._slabs):
            rows = min(self.per_slab, self.capacity - slot)
            self._slabs.append(torch.empty(rows, *self.shape, dtype=self.dtype, device=self.device))
        kept = self._slabs[slab][row]
        kept.copy_(factor)
        self._where[block] = kept
        return kept

    def as_dict(self) -> dict[int, torch.Tensor]:
        return dict(self._where)

    def clear(self) -> None:
        """Forget the kept factors; their slabs are reused."""
        self._where.clear()

    def release(self) -> None:
        self._where.clear()
        self._slabs.clear()

    def memory_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self._slabs)


class GradientStore:
    """Collects gradient chunks into the (m, d) matrix G, written in place when m is known
    (allocated once, never copied): in memory, or in a gradient file on disk when
    ``gradient_store`` asks for it (``"disk"`` or a folder) or, with ``"auto"``, when what
    low-rank blocks hold would be over ``max_memory_gb`` with G in memory but not with G on
    disk (:func:`~.plan.gradients_on_disk`). The kept factors of the low-rank blocks made
    from it are bounded by :func:`~.plan.factor_budget_bytes` of ``max_memory_gb``.

    Under ``torch.distributed`` this rank's rows are collected first, then :meth:`combine`
    shares the blocks out; :meth:`gather` instead gives every rank all of G in memory."""

    def __init__(
        self,
        layout: ParameterLayout,
        dtype: torch.dtype,
        num_samples: int | None = None,
        *,
        max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
        gradient_store="memory",
        ranks: Ranks | None = None,
        **_,
    ):
        self.layout, self.dtype, self.num_samples = layout, dtype, num_samples
        self.ranks = ranks  # those the rows come from (each rank's m rows)
        self.shares: list[range] | None = None  # the blocks of each rank, once combined
        self.budget_bytes = max_memory_gb * 2**30
        self.gradient_store = check_gradient_store(gradient_store)
        if num_samples is None and wants_disk(gradient_store):
            raise ValueError(
                f"gradient_store={gradient_store!r}: a gradient file is sized by the number of "
                "samples; pass num_samples=m"
            )
        self.chunks: list[torch.Tensor] = []
        self.rows: HeldGradients | GradientFile | None = None

    def add(self, chunk: torch.Tensor) -> None:
        if self.num_samples is None:
            self.chunks.append(chunk)
            return
        if self.rows is None:
            self.rows = self._allocate(chunk)
            if self.rows.filled:
                return  # G given whole: held, not copied
        self.rows.append(chunk)

    def matrix(self, num_samples: int | None) -> torch.Tensor | GradientFile:
        """G: a tensor in memory, or the gradient file."""
        if self.rows is None:
            return self.chunks[0] if len(self.chunks) == 1 else torch.cat(self.chunks)
        if self.rows.filled != self.num_samples:
            raise ValueError(
                f"gradients: {self.rows.filled} rows given but num_samples={self.num_samples}"
            )
        return self.rows.rows if isinstance(self.rows, HeldGradients) else self.rows

    def gather(self, ranks: Ranks) -> None:
        """The ranks' rows, gathered in rank order: every rank then holds all of G in memory."""
        local = self.matrix(None)
        self.chunks, self.rows, self.num_samples = [ranks.gather_rows(local)], None, None

    def combine(self, ranks: Ranks) -> None:
        """Share the blocks out (:func:`block_shares`): each rank receives, by all-to-all a
        few rows at a time, every rank's rows in the columns of its own blocks, stacked in
        rank order, into memory or into a new gradient file of its own; this rank's rows are
        then released."""
        on_disk = isinstance(self.rows, GradientFile)
        complete = self.rows is None or self.rows.filled == self.num_samples
        n = sum(c.shape[0] for c in self.chunks) if self.rows is None else self.rows.filled
        disk, done, total, squares = ranks.sum_numbers(float(on_disk), float(complete), n, n * n)
        if disk not in (0, ranks.size):
            raise ValueError(
                f"gradient_store: rank {ranks.rank} holds the gradients "
                f"{'on disk' if on_disk else 'in memory'} and another rank does not (their "
                "budgets or free disk differ); pass the same gradient_store='memory' or 'disk' "
                "on every rank"
            )
        if done != ranks.size or ranks.size * squares != total * total:
            raise ValueError(
                f"gradients: the ranks were given different numbers of rows (rank {ranks.rank}: "
                f"{n} of num_samples={self.num_samples}); every rank must give its m / "
                "world_size rows"
            )
        local = self.rows if self.rows is not None else HeldGradients(torch.cat(self.chunks))
        n, d = local.shape
        m = n * ranks.size
        shares = block_shares(self.layout, ranks.size, m)
        spans = [column_span(self.layout, share) for share in shares]
        spans = [(first, first + width) for first, width in spans]
        a, z = spans[ranks.rank]
        if on_disk:
            own = GradientFile(m, z - a, local.dtype, folder=self._folder(), device=local.device)
        else:
            own = HeldGradients.empty(m, z - a, local.dtype, local.device)
        step = max(1, WINDOW_BYTES // (d * local.dtype.itemsize))
        for i in range(0, n, step):
            j = min(i + step, n)
            mine = local.read_rows(i, j)
            parts = [mine[:, first:stop] for first, stop in spans]
            for rank, rows in enumerate(ranks.exchange(parts, (j - i, z - a))):
                own.write_rows(rank * n + i, rows)
        local.close()
        self.chunks, self.rows, self.num_samples = [], own, m
        self.ranks, self.shares = ranks, shares

    def finish(self, num_samples: int) -> LowRankCurvature:
        return LowRankCurvature(
            self.layout,
            self.matrix(num_samples),
            dtype=self.dtype,
            max_factor_bytes=factor_budget_bytes(self.budget_bytes),
            ranks=self.ranks if self.shares is not None else None,
            shares=self.shares,
        )

    def _allocate(self, chunk: torch.Tensor) -> HeldGradients | GradientFile:
        m, d = self.num_samples, chunk.shape[1]
        whole = chunk.shape[0] == m
        if self._on_disk(chunk.element_size(), whole):
            return GradientFile(m, d, chunk.dtype, folder=self._folder(), device=chunk.device)
        if whole:
            return HeldGradients(chunk)
        return HeldGradients.empty(m, d, chunk.dtype, chunk.device)

    def _folder(self):
        return None if self.gradient_store in ("auto", "disk") else self.gradient_store

    def _on_disk(self, itemsize: int, whole: bool) -> bool:
        if self.gradient_store == "auto":  # G given whole is in memory already
            world = 1 if self.ranks is None else self.ranks.size
            return not whole and gradients_on_disk(
                "auto", self.layout, self.num_samples * world, itemsize, self.budget_bytes,
                world_size=world,
            )  # fmt: skip
        return wants_disk(self.gradient_store)


ROW_PARTS = 4


def _row_edges(m: int) -> list[int]:
    return [m * i // ROW_PARTS for i in range(ROW_PARTS + 1)]


def _gram(g: torch.Tensor) -> torch.Tensor:
    """G Gᵀ for a (m, c) matrix, computing only the blocks on and below the diagonal."""
    m = g.shape[0]
    out = torch.empty(m, m, dtype=g.dtype, device=g.device)
    e = _row_edges(m)
    for a, z in zip(e[:-1], e[1:], strict=True):
        rows = g[a:z] @ g[:z].T
        out[a:z, :z] = rows
        out[:z, a:z] = rows.T
    return out


def _lower_times(lower: torch.Tensor, g: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """L G for a lower-triangular (m, m) L and a (m, c) G, skipping the zero upper blocks."""
    out = buffer[:, : g.shape[1]]
    e = _row_edges(g.shape[0])
    for a, z in zip(e[:-1], e[1:], strict=True):
        torch.matmul(lower[a:z, :z], g[:z], out=out[a:z])
    return out
