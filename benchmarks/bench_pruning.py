"""Pruning speed on the digits CNN: a cold sweep against one that reuses curvature, and the
cost of the exact group update against the summed one.

    python benchmarks/bench_pruning.py [--num-samples 512] [--damping 1e-5]

Cold: one ``prune_model`` call per (method, sparsity), each estimating its own curvature.
Reused: ``sweep``, which estimates gradients / factors / curvature once per setting and
reuses them at every sparsity. Both produce the same accuracies (checked). Timings are the
fastest of ``--repeats`` runs, cold and reused back to back, on ``--threads`` threads (1 by
default): on a shared machine single runs vary several-fold. The last line is
``sweep_cold_s=<s> sweep_reused_s=<s> group_vs_summed=<x>`` (all five methods; the ratio for
WoodFisher with B = 128).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from wfexplore.data import digits_loaders
from wfexplore.pruning import (
    PruningSettings,
    method_curvature,
    obs_saliency,
    prune_model,
    select_pruned,
    sweep,
    update_weights,
)
from wfexplore.pruning.estimation import take_examples
from wfexplore.training import pretrained_digits_model

SPARSITIES = (0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# (label, method, update): the five pruning methods compared
METHODS = (
    ("magnitude", "magnitude", "none"),
    ("OBD", "obd", "none"),
    ("WoodFisher summed", "woodfisher", "summed"),
    ("WoodFisher group", "woodfisher", "group"),
    ("K-FAC summed", "kfac", "summed"),
)


def cold(model, train, test, settings, update):
    """8 ``prune_model`` calls, each estimating its own curvature."""
    accuracy = {}
    for s in SPARSITIES:
        result = prune_model(
            model, settings, s, data=train, eval_data=test, update=update,
            per_layer_actual=False, progress=False,
        )  # fmt: skip
        accuracy[s] = result.summary["accuracy"]
    return accuracy


def reused(model, train, test, common, method, update):
    """One ``sweep`` call over the 8 sparsities: the curvature is estimated once."""
    frame = sweep(model, train, methods=(method,), updates=(update,), **common)
    return dict(zip(frame["sparsity"], frame["accuracy"], strict=True))


def fastest(repeats, fn, *args):
    """(fastest wall time over ``repeats`` runs, result of the last run)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return best, out


def sweep_comparison(model, train, test, args):
    """Per method, cold and reused timed back to back (fastest of ``--repeats``), then all
    five methods in the fewest sweep calls (magnitude, OBD and both WoodFisher updates
    share one set of gradient samples; K-FAC has its own factors)."""
    common = {
        "sparsities": SPARSITIES, "dampings": (args.damping,), "num_samples": (args.num_samples,),
        "block_sizes": (args.block_size,), "eval_data": test, "cache": False, "progress": False,
    }  # fmt: skip
    rows, same = {}, True
    for label, method, update in METHODS:
        settings = PruningSettings(method, args.damping, args.num_samples, args.block_size)
        cold_s, cold_acc = fastest(args.repeats, cold, model, train, test, settings, update)
        reused_s, reused_acc = fastest(
            args.repeats, reused, model, train, test, common, method, update
        )
        same &= all(abs(cold_acc[s] - reused_acc[s]) < 1e-12 for s in SPARSITIES)
        rows[label] = {"cold_s": cold_s, "reused_s": reused_s}

    def together():
        sweep(model, train, methods=("magnitude", "obd", "woodfisher"),
              updates=("summed", "group"), **common)  # fmt: skip
        sweep(model, train, methods=("kfac",), updates=("summed",), **common)

    together_s, _ = fastest(args.repeats, together)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.loc["total (5 separate calls)"] = table.sum()
    table.loc["total (2 sweep calls)"] = [
        table.loc["total (5 separate calls)", "cold_s"],
        together_s,
    ]
    table["speedup"] = table["cold_s"] / table["reused_s"]
    return table, same


def group_vs_summed(model, train, args, repeats=7):
    """One update of each kind at 90 % global sparsity, the curvature given."""
    examples = take_examples(train, args.num_samples)
    rows = []
    lam, m = args.damping, args.num_samples
    for label, settings in (
        ("WoodFisher B=128 (dense)", PruningSettings("woodfisher", lam, m, 128)),
        ("WoodFisher per layer (low-rank)",
         PruningSettings("woodfisher", lam, m, "layer", representation="lowrank")),
        ("K-FAC per layer", PruningSettings("kfac", lam, m)),
    ):  # fmt: skip
        layout = settings.layout(model)
        curvature = method_curvature(model, examples, layout, settings)
        w = layout.flatten(model).to(torch.float64)
        inverse_diag = curvature.inverse_diag()
        pruned = select_pruned(obs_saliency(w, inverse_diag), layout, 0.9)
        row = {"curvature": label}
        for update in ("summed", "group"):
            update_weights(w, pruned, curvature, update, inverse_diag=inverse_diag)  # warm-up
            best = float("inf")
            for _ in range(repeats):  # the fastest run: least disturbed by other processes
                start = time.perf_counter()
                change = update_weights(w, pruned, curvature, update, inverse_diag=inverse_diag)
                best = min(best, time.perf_counter() - start)
            row[f"{update}_ms"] = 1e3 * best
            row[f"{update}_predicted_dL"] = change.predicted_delta_loss
        row["group_vs_summed"] = row["group_ms"] / row["summed_ms"]
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--damping", type=float, default=1e-5)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="timings: fastest of this many")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads (1 by default: these tiny models gain nothing from more, and "
        "single-threaded timings suffer least from other processes)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 200)
    train, test = digits_loaders(batch_size=64, seed=0)
    model = pretrained_digits_model("cnn", progress=False)
    # a fixed list of examples, so every call sees the same data (the loader reshuffles)
    train = take_examples(train, args.num_samples)

    print(
        f"digits CNN, {len(METHODS)} methods × {len(SPARSITIES)} sparsities, global scope, "
        f"λ={args.damping:g}, m={args.num_samples}, B={args.block_size}, "
        f"{torch.get_num_threads()} thread(s), fastest of {args.repeats}"
    )
    prune_model(model, "magnitude", 0.5, eval_data=test, progress=False)  # warm-up
    table, same = sweep_comparison(model, train, test, args)
    print(table.round(3).to_string())
    print(f"cold and reused sweeps give the same accuracies: {same}")
    print()
    print("one update at 90 % global sparsity (curvature given), fastest of 7:")
    updates = group_vs_summed(model, train, args)
    print(updates.round(4).to_string(index=False))
    ratio = float(updates["group_vs_summed"].iloc[0])
    total = table.loc["total (2 sweep calls)"]
    print(
        f"sweep_cold_s={total['cold_s']:.2f} sweep_reused_s={total['reused_s']:.2f} "
        f"group_vs_summed={ratio:.2f}"
    )


if __name__ == "__main__":
    main()
