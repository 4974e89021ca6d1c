"""K-FAC: one Kronecker-factored block per Conv/Linear layer (Martens & Grosse 2015; KFC for conv).

For a Linear layer z = W a (+ b) with W ∈ R^{out×in} flattened row-major (index ``o·in + i``),
the gradient of one example is g = s ⊗ a with s = ∂ℓ/∂z, so

    F_W = E[(s sᵀ) ⊗ (a aᵀ)] ≈ E[s sᵀ] ⊗ E[a aᵀ] = S ⊗ A          (``torch.kron(S, A)``).

Convolutions (Grosse & Martens 2016, "KFC"): a_t is the unfolded input patch at output
location t (``F.unfold`` order: channel, then kernel row, then kernel column, which is the
row-major order of ``weight[o]``), s_t the output gradient there, T the number of
locations. Assuming spatially uncorrelated, homogeneous derivatives,

    F_W ≈ S ⊗ A,  A = E[(1/T) Σ_t a_t a_tᵀ],  S = E[Σ_t s_t s_tᵀ].

Linear layers applied to ``(N, …, in)`` inputs are treated the same way (T = the extra
positions). A bias is its own block (its own parameter in the layout) with A = [1], so
F_b ≈ S. With mini-batch-mean gradient samples (``batch_size=b``) s is the gradient of
the group's mean loss, which scales S by 1/b, as it scales the empirical Fisher.

Damping is exact: C = M + λI = S ⊗ A + λI. With S = U_S diag(σ) U_Sᵀ and A = U_A diag(α) U_Aᵀ,
C = (U_S ⊗ U_A) diag(σ ⊗ α + λ) (U_S ⊗ U_A)ᵀ, hence with D_jk = 1/(σ_j α_k + λ)

    diag(C⁻¹) = vec((U_S∘U_S) D (U_A∘U_A)ᵀ),   C⁻¹ vec(V) = vec(U_S[(U_Sᵀ V U_A) ∘ D]U_Aᵀ),

and columns of C⁻¹ alike: never a d×d matrix, only the out×out and in×in factors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from wfexplore._checks import one_of, positive_int
from wfexplore.copies import private_copy
from wfexplore.curvature.base import (
    COLUMN_CHUNK_BYTES,
    DISPLAY_BLOCK_LIMIT,
    Curvature,
    Positions,
)
from wfexplore.curvature.plan import ACTIVATION_COPIES, activation_bytes_of, first_input
from wfexplore.gradients import (
    FISHER_KINDS,
    LossFn,
    iter_example_chunks,
    sample_labels,
    true_fisher_likelihood,
)
from wfexplore.params import ParameterLayout

MAX_CHUNK_EXAMPLES = 256
CHUNK_ACTIVATION_BYTES = 2**30
"""Activations one chunk of examples may keep alive for its backward pass (sets the chunk)."""
UNFOLD_BYTES = 2**28
"""Unfolded input patches and output gradients (float64) formed at once for one layer."""


@dataclass
class KroneckerFactors:
    """C_block = S ⊗ A + λI for one analysed parameter, with eigendecompositions of S and A."""

    A: torch.Tensor  # (in, in); [[1]] for a bias
    S: torch.Tensor  # (out, out)
    eig_A: torch.Tensor
    vec_A: torch.Tensor
    eig_S: torch.Tensor
    vec_S: torch.Tensor

    @classmethod
    def from_factors(cls, A: torch.Tensor, S: torch.Tensor) -> KroneckerFactors:
        eig_A, vec_A = torch.linalg.eigh(A)
        eig_S, vec_S = torch.linalg.eigh(S)
        # both factors are positive semi-definite: round-off below zero is clipped
        return cls(A, S, eig_A.clamp_min(0), vec_A, eig_S.clamp_min(0), vec_S)

    @property
    def shape(self) -> tuple[int, int]:
        return self.S.shape[0], self.A.shape[0]

    def scale(self, damping: float) -> torch.Tensor:
        """D_jk = 1 / (σ_j α_k + λ)."""
        return 1.0 / (torch.outer(self.eig_S, self.eig_A) + damping)

    def nbytes(self) -> int:
        tensors = (self.A, self.S, self.eig_A, self.vec_A, self.eig_S, self.vec_S)
        return sum(t.numel() * t.element_size() for t in tensors)


class KFACCurvature(Curvature):
    """M = blockdiag(S_ℓ ⊗ A_ℓ) over the analysed Conv/Linear parameters, one block each."""

    kind = "kfac"
    requires_damping = True

    def __init__(self, layout: ParameterLayout, factors: Sequence[KroneckerFactors]):
        check_kfac_layout(layout)
        super().__init__(layout)
        if len(factors) != len(layout.parameters):
            raise ValueError(
                f"factors: expected one per parameter ({len(layout.parameters)}), "
                f"got {len(factors)}"
            )
        for p, f in zip(layout.parameters, factors, strict=True):
            if f.shape[0] * f.shape[1] != p.numel:
                raise ValueError(
                    f"factors of {p.name}: S ⊗ A is {f.shape[0]}·{f.shape[1]} square, "
                    f"the parameter has {p.numel} entries"
                )
        self.factors = list(factors)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        data: Iterable,
        layout: ParameterLayout,
        num_samples: int,
        **options,
    ) -> KFACCurvature:
        """Estimate A and S on the first ``num_samples × batch_size`` examples of ``data``.

        The model is copied and run in eval mode (the caller's model is untouched);
        ``options`` are those of :func:`kronecker_factors`.
        """
        return cls(layout, kronecker_factors(model, data, layout, num_samples, **options))

    @property
    def device(self) -> torch.device:
        return self.factors[0].A.device

    # --- forward ---------------------------------------------------------------------------
    def diag(self) -> torch.Tensor:
        return torch.cat(
            [torch.outer(f.S.diagonal(), f.A.diagonal()).reshape(-1) for f in self.factors]
        )

    def mean_diagonal(self) -> float:
        total = sum(float(f.S.diagonal().sum() * f.A.diagonal().sum()) for f in self.factors)
        return total / self.dim

    def mv(self, vector: torch.Tensor) -> torch.Tensor:
        """M v = vec(S V A), blockwise."""
        return self._blockwise(vector, lambda f, v: f.S @ v @ f.A)

    def columns(self, block: int, positions: Positions) -> torch.Tensor:
        """Columns ``positions`` of the block S ⊗ A; column (o, i) is vec(S[:, o] A[i])."""
        f = self.factors[block]
        in_dim = f.shape[1]
        positions = torch.as_tensor(positions, dtype=torch.long, device=f.A.device)
        s_cols, a_rows = f.S[:, positions // in_dim], f.A[positions % in_dim]  # (out, k), (k, in)
        return (s_cols.T[:, :, None] * a_rows[:, None, :]).reshape(len(positions), -1).T

    def block(self, index: int) -> torch.Tensor:
        self._check_display(index, "use columns or the factors instead")
        f = self.factors[index]
        return torch.kron(f.S, f.A)

    # --- inverse ---------------------------------------------------------------------------
    def _inverse_diag(self, damping: float) -> torch.Tensor:
        parts = []
        for f in self.factors:
            inv = (f.vec_S * f.vec_S) @ f.scale(damping) @ (f.vec_A * f.vec_A).T
            parts.append(inv.reshape(-1))
        return torch.cat(parts)

    def _inverse_mv(self, vector: torch.Tensor, damping: float) -> torch.Tensor:
        def solve(f: KroneckerFactors, v: torch.Tensor) -> torch.Tensor:
            rotated = f.vec_S.T @ v @ f.vec_A
            return f.vec_S @ (rotated * f.scale(damping)) @ f.vec_A.T

        return self._blockwise(vector, solve)

    def _inverse_columns(self, block: int, positions: Positions, damping: float) -> torch.Tensor:
        f = self.factors[block]
        out_dim, in_dim = f.shape
        positions = torch.as_tensor(positions, dtype=torch.long, device=f.A.device)
        scale = f.scale(damping)
        cols = torch.empty(out_dim * in_dim, len(positions), dtype=f.A.dtype, device=f.A.device)
        step = max(1, COLUMN_CHUNK_BYTES // (3 * 8 * out_dim * in_dim))
        for a in range(0, len(positions), step):
            pos = positions[a : a + step]
            rows_s, rows_a = f.vec_S[pos // in_dim], f.vec_A[pos % in_dim]  # (k, out), (k, in)
            inner = rows_s[:, :, None] * rows_a[:, None, :] * scale  # (k, out, in)
            cols[:, a : a + step] = (f.vec_S @ inner @ f.vec_A.T).reshape(len(pos), -1).T
        return cols

    def _inverse_block(self, index: int, damping: float) -> torch.Tensor:
        self._check_display(index, "use inverse_columns instead")
        return super()._inverse_block(index, damping)

    def memory_bytes(self) -> int:
        return sum(f.nbytes() for f in self.factors)

    # --- helpers -------------------------------------------------------------------------
    def _check_display(self, index: int, instead: str) -> None:
        size = self.layout.blocks[index].size
        if size > DISPLAY_BLOCK_LIMIT:
            raise ValueError(
                f"block {index} has {size} weights; a dense copy of a Kronecker block is only "
                f"made for blocks of at most {DISPLAY_BLOCK_LIMIT}; {instead}"
            )

    def _blockwise(self, vector: torch.Tensor, op) -> torch.Tensor:
        if vector.shape != (self.dim,):
            raise ValueError(f"vector: expected shape ({self.dim},), got {tuple(vector.shape)}")
        first = self.factors[0].A
        vector = vector.to(dtype=first.dtype, device=first.device)
        parts = []
        for p, f in zip(self.layout.parameters, self.factors, strict=True):
            parts.append(op(f, vector[p.offset : p.stop].reshape(f.shape)).reshape(-1))
        return torch.cat(parts)


# --- estimation of the factors ---------------------------------------------------------------
def check_kfac_layout(layout: ParameterLayout) -> None:
    """K-FAC has exactly one block per analysed parameter: refuse any other block layout."""
    if layout.block_size != "layer":
        raise ValueError(
            f"K-FAC curvature is one Kronecker block per layer, but the layout has "
            f"block_size={layout.block_size!r}; build it with block_size='layer' "
            "(e.g. layout.with_block_size('layer'))"
        )


def _kfac_modules(model: nn.Module, layout: ParameterLayout) -> dict[str, nn.Module]:
    """The module of each analysed parameter, checked to be a supported Conv/Linear weight/bias."""
    modules = dict(model.named_modules())
    found = {}
    for p in layout.parameters:
        module = modules.get(p.module_name)
        attr = p.name.rpartition(".")[2]
        supported = isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d))
        if not supported or attr not in ("weight", "bias"):
            raise ValueError(
                f"K-FAC needs the weight or bias of a Linear, Conv1d or Conv2d module, but "
                f"{p.name!r} belongs to {type(module).__name__}; select only such parameters "
                "(names=[...] or pattern=...)"
            )
        if isinstance(module, nn.Conv1d | nn.Conv2d) and module.groups != 1:
            raise ValueError(
                f"K-FAC: {p.module_name!r} is a grouped convolution (groups={module.groups}), "
                "whose Fisher block is not one Kronecker product; leave it out of the selection"
            )
        found[p.module_name] = module
    return found


def _patches(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input rows a_t, shape (N, T, in): unfolded patches for conv, trailing features for Linear."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1])
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, stride = (
            (1, *module.kernel_size),
            (1, *module.dilation),
            (1, *module.stride),
        )
    else:
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (N, C·k, T)
    return cols.transpose(1, 2)


def kronecker_factors(
    model: nn.Module,
    data: Iterable,
    layout: ParameterLayout,
    num_samples: int,
    *,
    batch_size: int = 1,
    loss_fn: LossFn = F.cross_entropy,
    fisher: str = "empirical",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    chunk_size: int | None = None,
    progress: bool = True,
    ranks=None,
) -> list[KroneckerFactors]:
    """The factors (A, S) of every analysed parameter (summed over ``ranks`` when given).

    One forward and one backward pass per chunk of examples on an eval-mode copy: inputs of
    the layers are caught by forward hooks, output gradients by ``torch.autograd.grad`` of
    Σ_groups (mean loss of the group), so each example's output gradient is its own.
    ``chunk_size`` (examples per pass) defaults to as many as keep the activations within
    :data:`CHUNK_ACTIVATION_BYTES` (at most :data:`MAX_CHUNK_EXAMPLES`); the sums
    Σ_t a_t a_tᵀ and Σ_t s_t s_tᵀ are formed over slices of a chunk's examples whose unfolded
    patches fit :data:`UNFOLD_BYTES`, so a ResNet-50 stem never unfolds a whole chunk.
    """
    check_kfac_layout(layout)
    positive_int(num_samples, "num_samples", "e.g. num_samples=256")
    positive_int(batch_size, "batch_size", "use 1 for per-example gradients")
    if chunk_size is None:
        chunk_size = _examples_per_chunk(model, data)
    positive_int(chunk_size, "chunk_size", "e.g. chunk_size=256")
    one_of(fisher, "fisher", FISHER_KINDS)
    if fisher == "true":
        true_fisher_likelihood(loss_fn)
    chunks = iter_example_chunks(data, num_samples, batch_size, max(1, chunk_size // batch_size))
    work = private_copy(model).eval()
    for p in work.parameters():
        p.requires_grad_(True)
    sums = _FactorSums(_kfac_modules(work, layout), dtype)
    device = next(work.parameters()).device
    generator = torch.Generator().manual_seed(seed)  # labels are drawn on the host
    bar = tqdm(total=num_samples, desc="K-FAC factors", unit="g", disable=not progress)
    try:
        for x, y in chunks:
            x, y = x.to(device), y.to(device)
            out = sums.forward(work, x)
            if fisher == "true":  # y from the model's predictive distribution, seeded
                y = sample_labels(out.detach(), loss_fn, generator)
            groups = x.shape[0] // batch_size
            sums.backward(loss_fn(out, y) * groups, groups)  # Σ of the groups' mean losses
            bar.update(groups)
    finally:
        bar.close()
        sums.close()
    if ranks is not None:
        sums.combine(ranks)
    return sums.factors(layout, batch_size, device)


def _examples_per_chunk(model: nn.Module, data) -> int:
    """Examples whose activations (``ACTIVATION_COPIES`` per example) fit
    :data:`CHUNK_ACTIVATION_BYTES`, between 1 and :data:`MAX_CHUNK_EXAMPLES`."""
    example = first_input(data)
    if example is None:
        return MAX_CHUNK_EXAMPLES
    per_example = ACTIVATION_COPIES * activation_bytes_of(private_copy(model), example)
    return max(1, min(MAX_CHUNK_EXAMPLES, CHUNK_ACTIVATION_BYTES // max(per_example, 1)))


def _products(module: nn.Module, x: torch.Tensor, g: torch.Tensor, dtype: torch.dtype):
    """Σ_n (1/T) Σ_t a_t a_tᵀ and Σ_n Σ_t s_t s_tᵀ of one layer over the examples of a chunk,
    in slices of examples whose unfolded patches and output gradients fit UNFOLD_BYTES."""
    first = _patches(module, x[:1])
    per_example = (first.numel() + g[:1].numel()) * torch.finfo(dtype).bits // 8
    step = max(1, UNFOLD_BYTES // max(per_example, 1))
    a_sum = s_sum = None
    for start in range(0, x.shape[0], step):
        a = _patches(module, x[start : start + step]).to(dtype)  # (n, T, in)
        s = g[start : start + step].to(dtype)
        s = s.movedim(1, -1) if not isinstance(module, nn.Linear) else s
        s = s.reshape(-1, s.shape[-1])  # (n·T, out)
        rows = a.reshape(-1, a.shape[-1])
        a_part, s_part = rows.T @ rows / a.shape[1], s.T @ s
        a_sum = a_part if a_sum is None else a_sum.add_(a_part)
        s_sum = s_part if s_sum is None else s_sum.add_(s_part)
    return a_sum, s_sum


class _FactorSums:
    """Σ_n (1/T) Σ_t a_t a_tᵀ and Σ_n Σ_t s_t s_tᵀ per module, from hooked forward passes."""

    def __init__(self, modules: dict[str, nn.Module], dtype: torch.dtype):
        self.modules, self.dtype = modules, dtype
        self.sums_A: dict[str, torch.Tensor] = {}
        self.sums_S: dict[str, torch.Tensor] = {}
        self.caught: dict[str, list] = {}
        self.seen = 0
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str):
        def catch(module, inputs, output):
            self.caught.setdefault(name, []).append((inputs[0].detach(), output))

        return catch

    def forward(self, work: nn.Module, x: torch.Tensor) -> torch.Tensor:
        self.caught.clear()
        out = work(x)
        for name in self.modules:
            if len(self.caught.get(name, ())) != 1:
                raise ValueError(
                    f"K-FAC: module {name!r} ran {len(self.caught.get(name, ()))} times in one "
                    "forward pass; it needs exactly one call per layer"
                )
        return out

    def backward(self, loss: torch.Tensor, groups: int) -> None:
        outputs = [self.caught[name][0][1] for name in self.modules]
        grads = torch.autograd.grad(loss, outputs)
        for (name, module), g in zip(self.modules.items(), grads, strict=True):
            a_sum, s_sum = _products(module, self.caught[name][0][0], g, self.dtype)
            if name in self.sums_A:
                self.sums_A[name] += a_sum
                self.sums_S[name] += s_sum
            else:
                self.sums_A[name], self.sums_S[name] = a_sum, s_sum
        self.seen += groups

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def combine(self, ranks) -> None:
        """Σ over the ranks of the process group (sums and the sample count)."""
        for name in self.modules:
            ranks.sum_(self.sums_A[name])
            ranks.sum_(self.sums_S[name])
        self.seen = int(ranks.sum_numbers(self.seen)[0])

    def factors(self, layout: ParameterLayout, batch_size: int, device) -> list[KroneckerFactors]:
        """A = Σ_A / (m·b) (A = [1] for a bias), S = Σ_S / m; non-finite factors are refused."""
        out = []
        one = torch.ones(1, 1, dtype=self.dtype, device=device)
        for p in layout.parameters:
            S = self.sums_S[p.module_name] / self.seen
            is_bias = p.name.rpartition(".")[2] == "bias"
            A = one if is_bias else self.sums_A[p.module_name] / (self.seen * batch_size)
            if not (torch.isfinite(A).all() and torch.isfinite(S).all()):
                raise FloatingPointError(
                    f"non-finite K-FAC factors for {p.name}; check the model's outputs, inputs "
                    "and loss for NaN/inf"
                )
            out.append(KroneckerFactors.from_factors(A, S))
        return out
