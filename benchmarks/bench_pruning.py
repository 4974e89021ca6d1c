"""Pruning speed on the digits CNN: a cold sweep against one that reuses curvature, and the
cost of the exact group update against the summed one.

    python benchmarks/bench_pruning.py [--num-samples 512] [--damping 1e-5]

Cold: one ``prune_model`` call per (method, sparsity), each estimating its own curvature.
Reused: ``sweep``, which estimates gradients / factors / curvature once per setting and
reuses them at every sparsity. Both produce the same rows (checked). The last line is
``sweep_cold_s=<s> sweep_reused_s=<s> group_vs_summed=<x>``.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from wfexplore.data import digits_loaders
from wfexplore.pruning import (
    PruningSettings,
    estimate_curvature,
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


def cold(model, train, test, settings_of):
    times, accuracy = {}, {}
    for label, method, update in METHODS:
        start = time.perf_counter()
        for s in SPARSITIES:
            result = prune_model(
                model, settings_of(method), s, data=train, eval_data=test, update=update,
                per_layer_actual=False, progress=False,
            )  # fmt: skip
            accuracy[(label, s)] = result.summary["accuracy"]
        times[label] = time.perf_counter() - start
    return times, accuracy


def reused(model, train, test, args):
    """Per method: one ``sweep`` call over the 8 sparsities; total: the 5 methods in the fewest
    calls (magnitude, OBD and both WoodFisher updates share one set of gradient samples)."""
    common = {
        "sparsities": SPARSITIES, "dampings": (args.damping,), "num_samples": (args.num_samples,),
        "block_sizes": (args.block_size,), "eval_data": test, "cache": False, "progress": False,
    }  # fmt: skip
    times, accuracy = {}, {}
    for label, method, update in METHODS:
        start = time.perf_counter()
        frame = sweep(model, train, methods=(method,), updates=(update,), **common)
        times[label] = time.perf_counter() - start
        for row in frame.to_dict("records"):
            accuracy[(label, row["sparsity"])] = row["accuracy"]
    start = time.perf_counter()
    sweep(model, train, methods=("magnitude", "obd", "woodfisher"), updates=("summed", "group"),
          **common)  # fmt: skip
    sweep(model, train, methods=("kfac",), updates=("summed",), **common)
    together = time.perf_counter() - start
    return times, accuracy, together


def group_vs_summed(model, train, args, repeats=3):
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
        curvature = estimate_curvature(model, examples, layout, settings)
        w = layout.flatten(model).to(torch.float64)
        inverse_diag = curvature.inverse_diag()
        pruned = select_pruned(obs_saliency(w, inverse_diag), layout, 0.9)
        row = {"curvature": label}
        for update in ("summed", "group"):
            update_weights(w, pruned, curvature, update, inverse_diag=inverse_diag)  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                change = update_weights(w, pruned, curvature, update, inverse_diag=inverse_diag)
            row[f"{update}_ms"] = 1e3 * (time.perf_counter() - start) / repeats
            row[f"{update}_predicted_dL"] = change.predicted_delta_loss
        row["group_vs_summed"] = row["group_ms"] / row["summed_ms"]
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=512)
    parser.add_argument("--damping", type=float, default=1e-5)
    parser.add_argument("--block-size", type=int, default=128)
    args = parser.parse_args()
    pd.set_option("display.width", 200)
    train, test = digits_loaders(batch_size=64, seed=0)
    model = pretrained_digits_model("cnn", progress=False)
    # a fixed list of examples, so every call sees the same data (the loader reshuffles)
    train = take_examples(train, args.num_samples)

    def settings_of(method):
        return PruningSettings(method, args.damping, args.num_samples, args.block_size)

    print(
        f"digits CNN, {len(METHODS)} methods × {len(SPARSITIES)} sparsities, global scope, "
        f"λ={args.damping:g}, m={args.num_samples}, B={args.block_size}, "
        f"{torch.get_num_threads()} threads"
    )
    cold_times, cold_acc = cold(model, train, test, settings_of)
    reused_times, reused_acc, together = reused(model, train, test, args)
    same = all(abs(cold_acc[k] - reused_acc[k]) < 1e-12 for k in cold_acc)
    table = pd.DataFrame(
        {
            "cold_s": cold_times,
            "reused_s": reused_times,
        }
    )
    table["speedup"] = table["cold_s"] / table["reused_s"]
    table.loc["total"] = [table["cold_s"].sum(), table["reused_s"].sum(),
                          table["cold_s"].sum() / table["reused_s"].sum()]  # fmt: skip
    table.loc["all five in 2 sweep calls"] = [table.loc["total", "cold_s"], together,
                                              table.loc["total", "cold_s"] / together]  # fmt: skip
    print(table.round(3).to_string())
    print(f"cold and reused sweeps give the same accuracies: {same}")
    print()
    print("one update at 90 % global sparsity (curvature given), mean of 3:")
    updates = group_vs_summed(model, train, args)
    print(updates.round(4).to_string(index=False))
    ratio = float(updates["group_vs_summed"].iloc[0])
    print(
        f"sweep_cold_s={table.loc['total', 'cold_s']:.2f} "
        f"sweep_reused_s={together:.2f} group_vs_summed={ratio:.2f}"
    )


if __name__ == "__main__":
    main()
