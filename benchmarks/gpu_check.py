"""GPU check: the core on CUDA against CPU float64, then a timing table at ResNet sizes.

Checks (a small CNN, ``DigitsCNN`` on synthetic 1×8×8 inputs; the reference is the same
model and inputs in float64 on the CPU; the device side runs in ``--dtype``, float64 by
default, so that any difference beyond round-off is a bug):

- per-example gradients (``gradient_samples``), normwise relative error;
- diag((M + λI)⁻¹) of dense blocks (B = 128), whole-layer low-rank blocks and K-FAC
  (``estimate_curvature(…, representation=…).inverse_diag(λ)``), elementwise relative error;
- one summed OBS update (``update_weights(w, pruned, M.damped(λ), "summed")``) with dense and
  low-rank M, for the same pruned set on both sides, normwise relative error of the weights;
- ``prune_model(model, "woodfisher", 0.5, data=…)``: the masks must be identical (float64),
  and the pruned weights agree.

Every check also asserts that its result lies on the device (a computation that silently
ran on the CPU fails it). Timing (float32 models on the device, synthetic inputs, one run
each, after the checks have warmed the device up): ResNet-20 (3×32×32) and ResNet-50
(3×224×224) — per-example gradients, low-rank whole-layer inverse diagonal (build + Cholesky
factors + diagonal), one summed OBS update at 50 % global sparsity, and one full one-shot
``prune_model`` (global WoodFisher 50 %, whole-layer low-rank blocks, summed update; it
computes its own gradients and evaluates every layer's actual loss change).

Usage::

    python benchmarks/gpu_check.py          # needs CUDA; without it says so and exits 0
    python benchmarks/gpu_check.py --cpu    # the same on the CPU, float32 vs float64, tiny
                                            # sizes: exercises the script itself

Columns: ``seconds`` wall time (the device synchronised before and after), ``peak_gb``
the peak of CUDA memory allocated in that phase (on the CPU: the process's peak RSS so far),
``GB`` = 10**9 bytes. The last line printed is always::

    gpu_check ok=<True|False> max_relerr=<e> device=<d> dtype=<t> checks=<passed>/<n> ...
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

GB = 1e9
CHECK_DAMPING = 0.1  # λ = 0.1 · mean(diag M_ref): every check's λ is the same on both sides
TOLERANCES = {torch.float64: 1e-8, torch.float32: 5e-3}
MASK_SHARE = {torch.float64: 0.0, torch.float32: 0.01}  # share of weights whose mask may differ


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device):
    """``(fn(), seconds, peak_gb)``, the device synchronised around the call."""
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / GB
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    return out, seconds, peak


def normwise(value: torch.Tensor, ref: torch.Tensor) -> float:
    """max|value − ref| / max|ref|, compared in float64 on the CPU."""
    value, ref = value.detach().cpu().double(), ref.detach().cpu().double()
    return float((value - ref).abs().max() / ref.abs().max())


def elementwise(value: torch.Tensor, ref: torch.Tensor) -> float:
    """max |value − ref| / |ref| over the entries (for positive vectors such as diag C⁻¹)."""
    value, ref = value.detach().cpu().double(), ref.detach().cpu().double()
    return float(((value - ref) / ref).abs().max())


def synthetic(n: int, shape: tuple[int, ...], classes: int, seed: int):
    """Seeded float32 inputs and integer labels, on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def loader(x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype, batch: int = 64) -> DataLoader:
    return DataLoader(TensorDataset(x.to(dtype), y), batch_size=batch, shuffle=False)


def render(rows: list[dict], columns: list[str], formats: dict[str, str]) -> str:
    """Aligned columns; text left, numbers right, blank where not measured."""
    cells = [
        ["" if r.get(c) is None else formats.get(c, "{}").format(r[c]) for c in columns]
        for r in rows
    ]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(values):
        return "  ".join(
            v.rjust(w) if c in formats else v.ljust(w)
            for c, v, w in zip(columns, values, widths, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])


def machine_line(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        where = (
            f"{props.name} (cc {props.major}.{props.minor}, {props.total_memory / 2**30:.1f} "
            f"GiB) | CUDA {torch.version.cuda} | cuDNN {torch.backends.cudnn.version()} | "
            f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32} "
            f"conv {torch.backends.cudnn.allow_tf32}"
        )
    else:
        name = platform.processor() or platform.machine()
        where = f"cpu ({name}) | threads {torch.get_num_threads()}"
    one, five, _ = os.getloadavg()
    return (
        f"gpu_check | {where} | torch {torch.__version__} | python {platform.python_version()} "
        f"| checks in {str(dtype).removeprefix('torch.')} | cpus {os.cpu_count()} | "
        f"load {one:.2f} {five:.2f}"
    )


# --------------------------------------------------------------------------------------------
# checks: device against CPU float64
# --------------------------------------------------------------------------------------------
class Checks:
    """Rows of (check, relative error, tolerance, result on the device, ok)."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype, self.rows = device, dtype, []
        self.tol = TOLERANCES[dtype]

    def add(self, name: str, error: float, results, note: str = "", tol: float | None = None):
        """One row; ``tol`` other than the dtype's marks a count, kept out of max_relerr."""
        counted = tol is None
        tol = self.tol if tol is None else tol
        on_device = all(t.device.type == self.device.type for t in results)
        ok = bool(error <= tol) and on_device
        self.rows.append(
            {
                "check": name,
                "relerr": error,
                "tol": tol,
                "on_device": "yes" if on_device else "NO",
                "ok": "yes" if ok else "NO",
                "note": note,
                "counted": counted,
            }
        )
        print(f"[check] {name}: relerr {error:.2e} (tol {tol:.0e}), on device {on_device}")

    @property
    def passed(self) -> int:
        return sum(r["ok"] == "yes" for r in self.rows)

    @property
    def max_relerr(self) -> float:
        return max(r["relerr"] for r in self.rows if r["counted"])


def _small_models(device: torch.device, dtype: torch.dtype):
    """The same seeded DigitsCNN twice: the CPU float64 reference and the one on the device."""
    from wfexplore.models import DigitsCNN

    torch.manual_seed(0)
    base = DigitsCNN().eval()  # float32 weights: both copies start from the same values
    import copy

    return copy.deepcopy(base).double(), copy.deepcopy(base).to(device=device, dtype=dtype)


def check_gradients(checks: Checks, ref_model, dev_model, ref_data, dev_data, layout, m: int):
    from wfexplore.gradients import gradient_samples

    g_ref = gradient_samples(ref_model, ref_data, layout, m, progress=False)
    g_dev = gradient_samples(dev_model, dev_data, layout, m, progress=False)
    checks.add("per-example gradients", normwise(g_dev, g_ref), [g_dev], f"m={m}, d={layout.dim}")


def check_curvatures(checks: Checks, ref_model, dev_model, ref_data, dev_data, m: int):
    """Inverse diagonals of dense / low-rank / K-FAC, and OBS updates with dense and low-rank."""
    from wfexplore.curvature import estimate_curvature
    from wfexplore.params import ParameterLayout
    from wfexplore.pruning import obs_saliency, select_pruned, update_weights

    for representation, block in (("dense", 128), ("lowrank", "layer"), ("kfac", "layer")):
        layout = ParameterLayout.from_model(ref_model, block_size=block)
        common = {"representation": representation, "layout": layout, "num_samples": m}
        m_ref = estimate_curvature(ref_model, ref_data, progress=False, **common)
        m_dev = estimate_curvature(dev_model, dev_data, progress=False, **common)
        lam = CHECK_DAMPING * m_ref.mean_diagonal()
        d_ref, d_dev = m_ref.inverse_diag(lam), m_dev.inverse_diag(lam)
        checks.add(
            f"{representation} inverse diag",
            elementwise(d_dev, d_ref),
            [d_dev],
            f"B={block}, λ={lam:.2e}",
        )
        if representation == "kfac":
            continue
        w_ref = layout.flatten(ref_model).double()
        w_dev = layout.flatten(dev_model).double()
        pruned = select_pruned(obs_saliency(w_ref, d_ref), layout, 0.5)
        new_ref = update_weights(w_ref, pruned, m_ref.damped(lam), "summed").weights
        change = update_weights(w_dev, pruned.to(checks.device), m_dev.damped(lam), "summed")
        checks.add(
            f"{representation} OBS update (summed)",
            normwise(change.weights, new_ref),
            [change.weights, change.delta],
            f"{int(pruned.sum())} of {layout.dim} removed",
        )


def check_prune_model(checks: Checks, ref_model, dev_model, ref_data, dev_data):
    from wfexplore.params import ParameterLayout
    from wfexplore.pruning import prune_model

    ref = prune_model(ref_model, "woodfisher", 0.5, data=ref_data, progress=False)
    dev = prune_model(dev_model, "woodfisher", 0.5, data=dev_data, progress=False)
    differ = sum(int((dev.masks[n].cpu() != ref.masks[n]).sum()) for n in ref.masks)
    total = sum(mask.numel() for mask in ref.masks.values())
    layout = ParameterLayout.from_model(ref_model)
    w_ref, w_dev = layout.flatten(ref.model), layout.flatten(dev.model)
    tensors = [*dev.masks.values(), w_dev]
    share = differ / total
    checks.add(
        "prune_model masks differ (share)",
        share,
        tensors,
        f"{differ} of {total} weights; woodfisher 0.5, defaults",
        tol=MASK_SHARE[checks.dtype],
    )
    if differ == 0:
        note = "the masks are identical"
        checks.add("prune_model pruned weights", normwise(w_dev, w_ref), [w_dev], note)
    return differ


def run_checks(device: torch.device, dtype: torch.dtype, m: int) -> tuple[Checks, int]:
    from wfexplore.params import ParameterLayout

    checks = Checks(device, dtype)
    ref_model, dev_model = _small_models(device, dtype)
    x, y = synthetic(max(m, 256), (1, 8, 8), 10, seed=1)  # prune_model's default m is 256
    ref_data, dev_data = loader(x, y, torch.float64), loader(x, y, dtype)
    layout = ParameterLayout.from_model(ref_model)
    check_gradients(checks, ref_model, dev_model, ref_data, dev_data, layout, m)
    check_curvatures(checks, ref_model, dev_model, ref_data, dev_data, m)
    differ = check_prune_model(checks, ref_model, dev_model, ref_data, dev_data)
    return checks, differ


# --------------------------------------------------------------------------------------------
# timing at ResNet sizes
# --------------------------------------------------------------------------------------------
def time_model(name: str, model, shape, m: int, device: torch.device, rows: list[dict]) -> None:
    from wfexplore.params import ParameterLayout
    from wfexplore.pruning import PruningSettings, prune_model

    model = model.to(device).eval()
    layout = ParameterLayout.from_model(model, block_size="layer")
    x, y = synthetic(m, shape, 1000 if name == "resnet50" else 10, seed=2)
    data = loader(x, y, torch.float32, batch=32)
    settings = PruningSettings(num_samples=m, block_size="layer", representation="lowrank")
    label = f"{name} {'×'.join(map(str, shape))}"
    info = f"d={layout.dim:,}, m={m}, {layout.num_blocks} layers"
    print(f"[time] {label}: {info}")

    def add(phase, seconds, peak, note=""):
        rows.append(
            {"model": label, "phase": phase, "seconds": seconds, "peak_gb": peak, "note": note}
        )
        print(f"[time] {label} {phase}: {seconds:.2f} s, peak {peak:.2f} GB")

    _time_phases(model, data, layout, m, settings.damping, device, add, info)
    _free(device)  # G and the factors of the phases above are gone
    _, s, peak = _timed(
        lambda: prune_model(model, settings, 0.5, data=data, progress=False), device
    )
    add("prune_model one-shot", s, peak, "woodfisher 0.5 global, low-rank layers, summed, eval")
    _free(device)


def _time_phases(model, data, layout, m: int, lam: float, device, add, info: str) -> None:
    """Per-example gradients, the low-rank whole-layer inverse diagonal, one OBS update."""
    from wfexplore.curvature import from_gradients
    from wfexplore.gradients import gradient_samples
    from wfexplore.pruning import obs_saliency, select_pruned, update_weights

    g, s, peak = _timed(lambda: gradient_samples(model, data, layout, m, progress=False), device)
    add("per-example gradients", s, peak, f"{info}; G {g.numel() * g.element_size() / GB:.2f} GB")

    def lowrank():
        curvature = from_gradients(g, layout, "lowrank")
        return curvature, curvature.inverse_diag(lam)

    (curvature, inverse_diag), s, peak = _timed(lowrank, device)
    add("low-rank inverse diag", s, peak, f"whole-layer blocks, λ={lam:g}, build+factors+diag")
    w = layout.flatten(model).double()
    pruned = select_pruned(obs_saliency(w, inverse_diag), layout, 0.5)
    damped = curvature.damped(lam)
    _, s, peak = _timed(
        lambda: update_weights(w, pruned, damped, "summed", inverse_diag=inverse_diag), device
    )
    add("one OBS update (summed)", s, peak, f"{int(pruned.sum()):,} weights removed, global")


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_timing(args, device: torch.device) -> list[dict]:
    from wfexplore.models import resnet20, torchvision_model

    rows: list[dict] = []
    torch.manual_seed(0)
    time_model("resnet20", resnet20(), (3, 32, 32), args.r20_samples, device, rows)
    torch.manual_seed(0)
    size = args.r50_size
    time_model("resnet50", torchvision_model("resnet50"), (3, size, size), args.r50_samples,
               device, rows)  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="run everything on the CPU (checks float32 vs float64, tiny timing sizes)",
    )
    parser.add_argument(
        "--dtype", choices=("float64", "float32"), help="the device side of the checks "
        "(default float64 on CUDA, float32 with --cpu)"
    )  # fmt: skip
    parser.add_argument("--check-samples", type=int, default=64, help="m of the checks")
    parser.add_argument("--r20-samples", type=int, help="ResNet-20 m (default 256; --cpu 8)")
    parser.add_argument("--r50-samples", type=int, help="ResNet-50 m (default 128; --cpu 2)")
    parser.add_argument("--r50-size", type=int, help="ResNet-50 input side (default 224; --cpu 32)")
    parser.add_argument("--skip-timing", action="store_true", help="only the checks")
    args = parser.parse_args(argv)
    defaults = {
        "dtype": "float32" if args.cpu else "float64",
        "r20_samples": 8 if args.cpu else 256,
        "r50_samples": 2 if args.cpu else 128,
        "r50_size": 32 if args.cpu else 224,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print(
            f"gpu_check: CUDA is not available (torch {torch.__version__}, built for CUDA "
            f"{torch.version.cuda}); nothing checked; --cpu runs the checks on the CPU"
        )
        return 0
    device = torch.device("cpu" if args.cpu else "cuda")
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    print(machine_line(device, dtype))
    if args.cpu:
        print("--cpu: CPU float32 against CPU float64, tiny sizes; this only exercises the script")
    checks, differ = run_checks(device, dtype, args.check_samples)
    print()
    columns = ["check", "relerr", "tol", "on_device", "ok", "note"]
    print(render(checks.rows, columns, {"relerr": "{:.2e}", "tol": "{:.0e}"}))
    if not args.skip_timing:
        rows = run_timing(args, device)
        print()
        print(render(rows, ["model", "phase", "seconds", "peak_gb", "note"],
                     {"seconds": "{:.2f}", "peak_gb": "{:.2f}"}))  # fmt: skip
    total = time.perf_counter() - start
    ok = checks.passed == len(checks.rows)
    print()
    print(
        f"gpu_check ok={ok} max_relerr={checks.max_relerr:.1e} device={device.type} "
        f"dtype={args.dtype} checks={checks.passed}/{len(checks.rows)} mask_differ={differ} "
        f"seconds={total:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
