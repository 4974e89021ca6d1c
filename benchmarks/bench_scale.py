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
layer and says which one ``auto`` picks. ``--world-size N`` also runs the same call over N
gloo processes on this machine (torch.distributed; each rank takes m / N samples of its own
synthetic shard and 1/N of the cores) and prints one process and the N ranks side by side:
seconds, and each rank's peak RSS against its plan (``wfexplore.plan(world_size=N)``); the
last line is then the ranks' (the largest rank peak).
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


def data_for(name: str, examples: int, batch: int = 16, seed: int = 0):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
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


def child(args, rank: int = 0, world: int = 1) -> dict:
    """Runs in a fresh interpreter (one rank of ``world``): one prune_model call; the wall
    seconds of each phase (from the result's summary, in the order they run) and the peak RSS
    sampled within it."""
    import torch

    from wfexplore.pruning import PruningSettings, prune_model

    torch.manual_seed(0)
    model = build(args.model)
    data = data_for(args.model, args.num_samples // world, seed=rank)
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


def rank_child(rank: int, args, folder: str) -> None:
    """One rank of ``--world-size`` gloo processes: :func:`child` on its own shard."""
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world_size))
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=args.world_size,
                            timeout=datetime.timedelta(minutes=30))  # fmt: skip
    try:
        measured = child(args, rank, args.world_size)
    finally:
        dist.destroy_process_group()
    with open(f"{folder}/rank{rank}.json", "w") as f:
        json.dump(measured, f)


def ranks(args) -> list[dict]:
    """Every rank's measurement, in a fresh interpreter that spawns the ranks."""
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(rank_child, args=(args, folder), nprocs=args.world_size,
                           start_method="spawn")  # fmt: skip
        out = []
        for r in range(args.world_size):
            with open(f"{folder}/rank{r}.json") as f:
                out.append(json.load(f))
        return out


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
    parser.add_argument("--world-size", type=int, default=1,
                        help="also run over this many gloo processes, side by side")  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ranks", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(ranks(args) if args.ranks else child(args)))
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
    last = (f"{line} seconds={measured['seconds']:.1f} peak_gb={measured['peak_gb']:.2f} "
            f"plan_gb={plan_gb:.2f}")  # fmt: skip
    if args.world_size > 1:
        last = side_by_side(args, command, settings, measured, plan_gb, line)
    print(last)


def side_by_side(args, command, settings, single: dict, single_plan_gb: float, line: str) -> str:
    """The same call over ``--world-size`` gloo ranks beside the one process; the last line."""
    import wfexplore

    n = args.world_size
    plan = wfexplore.plan(build(args.model), settings, max_memory_gb=args.max_memory_gb,
                          example=data_for(args.model, 2), gradient_store=args.gradient_store,
                          world_size=n)  # fmt: skip
    load = os.getloadavg()[0]
    done = subprocess.run([*command, f"--world-size={n}", "--ranks"], capture_output=True,
                          text=True, check=True)  # fmt: skip
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    rank_plan = plan.peak_bytes / 2**30
    print(
        f"\n  run           seconds  peak_rss_gb  plan_gb  representation  gradients "
        f"(load {load:.2f} before, {os.getloadavg()[0]:.2f} after)"
    )
    print(
        f"  1 process    {single['seconds']:8.1f}  {single['peak_gb']:11.2f}  "
        f"{single_plan_gb:7.2f}  {single['representation']:14s}  {single['gradient_store']}"
    )
    for r, m in enumerate(measured):
        print(f"  rank {r} of {n}  {m['seconds']:8.1f}  {m['peak_gb']:11.2f}  {rank_plan:7.2f}  "
              f"{m['representation']:14s}  {m['gradient_store']}")  # fmt: skip
    seconds = max(m["seconds"] for m in measured)
    peak = max(m["peak_gb"] for m in measured)
    print(f"  ratio {n} ranks / 1 process: seconds {seconds / single['seconds']:.2f}, "
          f"peak per rank {peak / single['peak_gb']:.2f}")  # fmt: skip
    return (f"{line} seconds={seconds:.1f} peak_gb={peak:.2f} plan_gb={rank_plan:.2f} "
            f"world_size={n}")  # fmt: skip


if __name__ == "__main__":
    main()
