"""The WoodFisher claim on the embedded digits data: one-shot accuracy vs sparsity.

    python benchmarks/paper_claim.py [--out claim.md] [--num-samples 1024] [--steps 4]

For the digits MLP and CNN (``pretrained_digits_model``): magnitude, OBD, WoodFisher (summed
and group update), K-FAC (summed and group update), at global and layerwise scope, one-shot
(k = 1) and with k recomputation steps (global scope). λ is swept over 1e-1 … 1e-7 and
chosen per (model, method, update, scope) by the mean *training* loss over the sparsity
grid, so the test accuracies reported are not tuned on the test set. Results are cached
on disk by ``sweep``; a rerun is quick. Prints markdown tables (and writes them to --out).
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from torch.utils.data import DataLoader

from wfexplore.data import digits_datasets, digits_loaders
from wfexplore.pruning import sweep
from wfexplore.pruning.estimation import take_examples
from wfexplore.training import pretrained_digits_model

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
DAMPINGS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
VARIANTS = (  # (row label, method, update)
    ("magnitude", "magnitude", "none"),
    ("OBD", "obd", "none"),
    ("WoodFisher summed", "woodfisher", "summed"),
    ("WoodFisher group", "woodfisher", "group"),
    ("K-FAC summed", "kfac", "summed"),
    ("K-FAC group", "kfac", "group"),
)


def claim_frame(kind: str, args) -> tuple[pd.DataFrame, dict]:
    """All points for one model: k = 1 over the λ grid, then k steps at the chosen λ."""
    model = pretrained_digits_model(kind, progress=False)
    train_loader, test_loader = digits_loaders(batch_size=64, seed=0)
    train_set, _ = digits_datasets()
    evals = {"train": DataLoader(train_set, batch_size=256), "test": test_loader}
    examples = take_examples(train_loader, args.num_samples)  # fixed: the loader reshuffles
    common = {
        "sparsities": SPARSITIES, "num_samples": (args.num_samples,),
        "block_sizes": (args.block_size,), "eval_data": evals, "progress": args.progress,
    }  # fmt: skip
    one_shot = sweep(
        model, examples, scopes=("global", "layerwise"), updates=("summed", "group"),
        dampings=DAMPINGS, steps=(1,), **common,
    )  # fmt: skip
    chosen = {}
    for (method, update, scope), rows in one_shot.groupby(
        ["method", "update", "scope"], dropna=False
    ):
        if method == "magnitude":
            chosen[(method, update, scope)] = None
            continue
        mean_train_loss = rows.groupby("damping")["train_loss"].mean()
        chosen[(method, update, scope)] = float(mean_train_loss.idxmin())
    frames = [_at_chosen(one_shot, chosen)]
    if args.steps > 1:
        for _, method, update in VARIANTS:
            lam = chosen[(method, update, "global")]
            frames.append(
                sweep(
                    model,
                    examples,
                    methods=(method,),
                    updates=(update,),
                    scopes=("global",),
                    dampings=(lam or 1e-5,),
                    steps=(args.steps,),
                    **common,
                )  # fmt: skip
            )
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(0, "model", kind)
    return frame, chosen


def _at_chosen(frame: pd.DataFrame, chosen: dict) -> pd.DataFrame:
    keep = []
    for row in frame.itertuples():
        lam = chosen[(row.method, row.update, row.scope)]
        keep.append(lam is None or row.damping == lam)
    return frame[keep]


def label_of(method: str, update: str, steps: int) -> str:
    base = {v[1:]: v[0] for v in VARIANTS}[(method, update)]
    return base if steps == 1 else f"{base}, k={steps}"


def tables(frame: pd.DataFrame, chosen: dict) -> str:
    out = []
    for (kind, scope), rows in frame.groupby(["model", "scope"], sort=False):
        dense = rows["dense_test_accuracy"].iloc[0]
        pivot = rows.assign(
            method_label=[
                label_of(m, u, k)
                for m, u, k in zip(rows["method"], rows["update"], rows["steps"], strict=True)
            ],
            acc=rows["test_accuracy"] * 100,
        ).pivot_table(index="method_label", columns="sparsity", values="acc", sort=False)
        lams = []
        for label in pivot.index:
            method, update = next((m, u) for lab, m, u in VARIANTS if label.startswith(lab))
            lam = chosen[(kind, method, update, scope if "k=" not in label else "global")]
            lams.append("—" if lam is None else f"{lam:.0e}")
        pivot.insert(0, "λ", lams)
        pivot.columns = ["λ"] + [f"{c:.0%}" for c in pivot.columns[1:]]
        out.append(
            f"**digits {kind.upper()}, {scope} scope** — test accuracy (%), dense "
            f"{dense * 100:.1f} %\n\n" + markdown(pivot.round(1)) + "\n"
        )
    return "\n".join(out)


def markdown(table: pd.DataFrame) -> str:
    """A pipe table (pandas' ``to_markdown`` needs the optional ``tabulate``)."""
    header = ["", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join([str(index), *cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=1024)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args()
    start = time.perf_counter()
    frames, chosen = [], {}
    for kind in ("mlp", "cnn"):
        frame, picked = claim_frame(kind, args)
        frames.append(frame)
        chosen.update({(kind, *k): v for k, v in picked.items()})
    frame = pd.concat(frames, ignore_index=True)
    text = (
        f"m = {args.num_samples} per-example gradients (empirical Fisher), WoodFisher blocks of "
        f"B = {args.block_size}, λ chosen per method by the mean training loss over the "
        f"sparsities, {torch.get_num_threads()} CPU threads, "
        f"{time.perf_counter() - start:.0f} s\n\n" + tables(frame, chosen)
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        frame.to_csv(args.out.rsplit(".", 1)[0] + ".csv", index=False)


if __name__ == "__main__":
    main()
