"""What training-aware pruning costs on the digits CNN: gradual pruning per method, with the
share of its wall time spent estimating the curvature, beside one-shot + fine-tune.

    python benchmarks/bench_gradual.py [--epochs 3] [--sparsity 0.9] [--num-samples 256]

Both protocols train ``--epochs`` epochs (SGD, momentum 0.9, lr 0.01, batches of 64);
gradual pruning prunes at the start of every epoch (cubic schedule, global scope, the
method's default update) and re-estimates the curvature before each step; one-shot +
fine-tune prunes once at epoch 0. ``seconds`` is curvature + pruning + training (the
evaluations after every epoch and step are timed apart, in ``eval_s``). Timings are the
fastest of ``--repeats`` runs, on ``--threads`` threads (1 by default: these tiny models gain
nothing from more, and single-threaded timings suffer least from other processes). The
machine's load average is printed before and after. The last lines are
``gradual method=<m> steps=<n> seconds=<s> curvature_share=<f> finetune_seconds=<s>
accuracy=<a> finetune_accuracy=<a>``, one per method.
"""

from __future__ import annotations

import argparse
import functools
import os

import pandas as pd
import torch
from torch.utils.data import DataLoader

from wfexplore.data import digits_datasets
from wfexplore.pruning import (
    METHODS,
    PruningSettings,
    TrainingSettings,
    gradual_prune,
    one_shot_then_finetune,
)
from wfexplore.training import pretrained_digits_model


def fastest(repeats: int, fn):
    """The result of the run with the smallest ``summary["seconds"]``."""
    runs = [fn() for _ in range(repeats)]
    return min(runs, key=lambda r: r.summary["seconds"])


def measure(model, train, test, settings, args) -> list[dict]:
    training = TrainingSettings(
        optimizer=functools.partial(torch.optim.SGD, lr=args.lr, momentum=0.9)
    )
    common = {
        "train_data": train, "eval_data": test, "epochs": args.epochs,
        "training": training, "progress": False,
    }  # fmt: skip
    gradual = fastest(
        args.repeats,
        lambda: gradual_prune(model, settings, args.sparsity, prune_every=1, **common),
    )
    once = fastest(
        args.repeats, lambda: one_shot_then_finetune(model, settings, args.sparsity, **common)
    )
    rows = []
    for protocol, result in (("gradual", gradual), ("one-shot + fine-tune", once)):
        s = result.summary
        rows.append(
            {
                "method": settings.method,
                "protocol": protocol,
                "steps": s["steps"],
                "seconds": s["seconds"],
                "curvature_s": s["curvature_s"],
                "prune_s": s["prune_s"],
                "train_s": s["train_s"],
                "eval_s": s["eval_s"],
                "curvature_share": s["curvature_s"] / s["seconds"],
                "accuracy": s["accuracy"],
                "worst_after_step": float(result.steps["accuracy_after"].min()),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--num-samples", type=int, default=256)
    parser.add_argument("--damping", type=float, default=1e-4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=3, help="timings: fastest of this many")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 200)
    pd.set_option("display.float_format", "{:.3f}".format)
    load_before = os.getloadavg()
    train_set, test_set = digits_datasets()
    train = DataLoader(train_set, batch_size=64, shuffle=True)
    test = DataLoader(test_set, batch_size=256)
    model = pretrained_digits_model("cnn", progress=False)
    print(
        f"digits CNN, {args.sparsity:.0%} global, {args.epochs} epochs, m = {args.num_samples}, "
        f"λ = {args.damping:g}, B = {args.block_size}; {args.threads} thread(s); fastest of "
        f"{args.repeats}; load average before {load_before[0]:.2f} (1 min), "
        f"{load_before[1]:.2f} (5 min) on {os.cpu_count()} cores"
    )
    rows = []
    for method in METHODS:
        settings = PruningSettings(method, args.damping, args.num_samples, args.block_size)
        rows += measure(model, train, test, settings, args)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    load_after = os.getloadavg()
    print(f"load average after {load_after[0]:.2f} (1 min), {load_after[1]:.2f} (5 min)")
    by = table.set_index(["method", "protocol"])
    for method in METHODS:
        g, f = by.loc[(method, "gradual")], by.loc[(method, "one-shot + fine-tune")]
        print(
            f"gradual method={method} steps={int(g['steps'])} seconds={g['seconds']:.3f} "
            f"curvature_share={g['curvature_share']:.3f} finetune_seconds={f['seconds']:.3f} "
            f"accuracy={g['accuracy']:.3f} finetune_accuracy={f['accuracy']:.3f}"
        )


if __name__ == "__main__":
    main()
