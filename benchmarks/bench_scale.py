"""Your own model at full size: the plan, then one-shot global WoodFisher at 50 % measured.

    python benchmarks/bench_scale.py --model resnet20 --num-samples 64 --block-size 2000
    python benchmarks/bench_scale.py --model resnet50 --num-samples 256 --block-size 2000

On synthetic inputs of the model's shape (CIFAR 32×32 for resnet20, ImageNet 224×224 for
resnet18/resnet50/mobilenet_v2), with the summed OBS update: it prints the plan
(``wfexplore.plan``), then runs ``prune_model`` in a fresh subprocess that reports the wall
seconds of each phase (gradients, curvature and diag C⁻¹; selection and update; evaluation:
the result's ``summary``) with the peak RSS sampled within it, and ends with one line

    scale model=<name> d=<weights> m=<M> B=<B> seconds=<s> peak_gb=<g> plan_gb=<g>

``--gradient-store`` (default ``auto``: in memory, or in a file on disk when the plan with
the gradients in memory is over the budget) is passed on; the plan's ``strategy`` column and
the measured line say where the gradients went. A plan over ``--max-memory-gb`` is refused
before any work, as ``prune_model`` would; the line then says ``refused=1``. ``--grid``
also times dense against low-rank blocks side by side on a d × m × B grid of one synthetic
layer and says which one ``auto`` picks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SHAPES = {"resnet20": (3, 32, 32), "resnet18": (3, 224, 224), "resnet50": (3, 224, 224),
          "mobilenet_v2": (3, 224, 224)}  # fmt: skip
CLASSES = {"resnet20": 10}


def rss_gb(field: str = "VmRSS:") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 2**20
    return float("nan")


def build(name: str):
    from wfexplore.models import torchvision_model

    return torchvision_model(name, num_classes=CLASSES.get(name, 1000)).eval()


def data_for(name: str, examples: int, batch: int = 16):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(examples, *SHAPES[name], generator=g)
    y = torch.randint(0, CLASSES.get(name, 1000), (examples,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


class RssSampler:
    """VmRSS every ``interval`` seconds in a thread: (seconds since start, GB) samples."""

    def __init__(self, interval: float = 0.2):
        import threading

        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self.start, rss_gb()))
            self._stop.wait(self.interval)

    def peak(self, start: float, stop: float) -> float:
        inside = [gb for t, gb in self.samples if start <= t <= stop]
        return max(inside, default=float("nan"))


PHASES = (("gradients, curvature, diag C⁻¹", "curvature_s"), ("selection and update", "prune_s"),
          ("evaluation", "eval_s"))  # fmt: skip


def child(args) -> dict:
    """Runs in a fresh interpreter: one prune_model call; the wall seconds of each phase (from
    the result's summary, in the order they run) and the peak RSS sampled within it."""
    import torch

    from wfexplore.pruning import PruningSettings, prune_model

    torch.manual_seed(0)
    model = build(args.model)
    data = data_for(args.model, args.num_samples)
    settings = PruningSettings("woodfisher", damping=1e-5, num_samples=args.num_samples,
                               block_size=args.block_size)  # fmt: skip
    base = rss_gb()
    with RssSampler() as sampler:
        result = prune_model(model, settings, 0.5, data=data, update="summed", progress=False,
                             per_layer_actual=False, max_memory_gb=args.max_memory_gb,
                             gradient_store=args.gradient_store)  # fmt: skip
        seconds = time.perf_counter() - sampler.start
    phases, at = [], 0.0
    for name, key in PHASES:
        spent = result.summary.get(key, 0.0)
        phases.append((name, spent, sampler.peak(at, at + spent + sampler.interval)))
        at += spent
    return {
        "seconds": seconds,
        "phases": phases,
        "peak_gb": rss_gb("VmHWM:"),
        "base_gb": base,
        "plan_gb": result.plan.peak_bytes / 2**30,
        "d": result.layout.dim,
        "representation": result.plan.representation,
        "gradient_store": str(result.plan.gradient_store),
        "disk_gb": result.plan.disk_bytes / 2**30,
        "accuracy": result.summary.get("accuracy"),
    }


def grid() -> None:
    """Dense against low-rank blocks on one synthetic layer, side by side, and auto's pick."""
    import torch

    from wfexplore.curvature import from_gradients
    from wfexplore.curvature.plan import auto_representation
    from wfexplore.params import AnalysedParameter, ParameterLayout

    print("\n  d        m     B    dense_s  lowrank_s  faster   auto    auto_right")
    for d, m, block in [(65536, 64, 512), (65536, 256, 512), (65536, 256, 128),
                        (65536, 1024, 128), (262144, 256, 1024)]:  # fmt: skip
        layout = ParameterLayout([AnalysedParameter("w.weight", "w", "Linear", (d,), 0)], block)
        g = torch.randn(m, d, generator=torch.Generator().manual_seed(0)) * 1e-2
        times = {}
        for representation in ("dense", "lowrank"):
            start = time.perf_counter()
            from_gradients(g, layout, representation).inverse_diag(1e-5)
            times[representation] = time.perf_counter() - start
        faster = min(times, key=times.get)
        auto = auto_representation(layout, m, 16 * 2**30)
        print(f"  {d:<8d} {m:<5d} {block:<5d} {times['dense']:8.2f} {times['lowrank']:10.2f}"
              f"  {faster:7s}  {auto:7s} {auto == faster}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="resnet20")
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--block-size", type=lambda t: t if t in ("layer", "model") else int(t),
                        default=2000)  # fmt: skip
    parser.add_argument("--max-memory-gb", type=float, default=None)
    parser.add_argument("--gradient-store", default="auto",
                        help="auto, memory, disk or a folder for the gradient file")  # fmt: skip
    parser.add_argument("--grid", action="store_true", help="time dense vs low-rank on a grid")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    import torch

    import wfexplore
    from wfexplore.pruning import PruningSettings

    load = os.getloadavg()
    print(f"bench_scale | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"cpus {os.cpu_count()} | load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")  # fmt: skip
    settings = PruningSettings("woodfisher", num_samples=args.num_samples,
                               block_size=args.block_size)  # fmt: skip
    plan = wfexplore.plan(build(args.model), settings, max_memory_gb=args.max_memory_gb,
                          example=data_for(args.model, 2),
                          gradient_store=args.gradient_store)  # fmt: skip
    print(plan)
    print(plan.layers.to_string(index=False, max_rows=12))
    d, plan_gb = int(plan.layers["numel"].sum()), plan.peak_bytes / 2**30
    line = f"scale model={args.model} d={d} m={args.num_samples} B={args.block_size}"
    if not plan.fits:
        print(f"refused before any work: {plan.suggestions()}")
        print(f"{line} seconds=0 peak_gb=0 plan_gb={plan_gb:.3g} refused=1")
        return
    command = [sys.executable, __file__, "--child", f"--model={args.model}",
               f"--num-samples={args.num_samples}", f"--block-size={args.block_size}",
               f"--gradient-store={args.gradient_store}"]  # fmt: skip
    if args.max_memory_gb is not None:
        command.append(f"--max-memory-gb={args.max_memory_gb}")
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nmeasured in a fresh process: {measured['seconds']:.1f} s, peak RSS "
          f"{measured['peak_gb']:.2f} GB (of which {measured['base_gb']:.2f} GB before the call),"
          f" {measured['representation']} blocks, gradients: {measured['gradient_store']} "
          f"({measured['disk_gb']:.2f} GB on disk); plan {plan_gb:.2f} GB "
          f"(ratio {plan_gb / (measured['peak_gb'] - measured['base_gb']):.2f} to the call's "
          f"own peak); load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print("\n  phase                           seconds  peak_rss_gb")
    for name, spent, peak in measured["phases"]:
        print(f"  {name:30s}  {spent:8.1f}  {peak:11.2f}")
    if args.grid:
        grid()
    print(f"{line} seconds={measured['seconds']:.1f} peak_gb={measured['peak_gb']:.2f} "
          f"plan_gb={plan_gb:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
