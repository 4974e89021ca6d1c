"""The WoodFisher claim on the embedded digits data: one-shot accuracy vs sparsity.

    python benchmarks/paper_claim.py [--out claim.md] [--num-samples 1024] [--steps 4]

For the digits MLP and CNN (``pretrained_digits_model``): magnitude, OBD, WoodFisher (summed
and group update), K-FAC (summed and group update), at global and layerwise scope, one-shot
(k = 1) and with k recomputation steps (global scope). λ is swept over 1e-1 … 1e-7 and
chosen per (model, method, update, scope, sparsity) by the *training* loss after pruning
(k = 1; the same λ is used for k steps), so the test accuracies are not tuned on the test
set. Results are cached
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
    chosen = {}  # (method, update, scope, sparsity) -> λ with the lowest training loss
    for (method, update, scope, sparsity), rows in one_shot.groupby(
        ["method", "update", "scope", "sparsity"], dropna=False
    ):
        best = None if method == "magnitude" else rows.loc[rows["train_loss"].idxmin(), "damping"]
        chosen[(method, update, scope, sparsity)] = None if best is None else float(best)
    frames = [_at_chosen(one_shot, chosen)]
    if args.steps > 1:  # k steps, global scope, at the λ chosen for one-shot at that sparsity
        for _, method, update in VARIANTS:
            for sparsity in SPARSITIES:
                lam = chosen[(method, update, "global", sparsity)]
                frames.append(
                    sweep(
                        model,
                        examples,
                        methods=(method,),
                        updates=(update,),
                        scopes=("global",),
                        dampings=(lam or 1e-5,),
                        steps=(args.steps,),
                        **{**common, "sparsities": (sparsity,)},
                    )  # fmt: skip
                )
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(0, "model", kind)
    return frame, chosen


def _at_chosen(frame: pd.DataFrame, chosen: dict) -> pd.DataFrame:
    keep = []
    for row in frame.itertuples():
        lam = chosen[(row.method, row.update, row.scope, row.sparsity)]
        keep.append(lam is None or row.damping == lam)
    return frame[keep]


def label_of(method: str, update: str, steps: int) -> str:
    base = {v[1:]: v[0] for v in VARIANTS}[(method, update)]
    return base if steps == 1 else f"{base}, k={steps}"


def tables(frame: pd.DataFrame) -> str:
    """Per (model, scope): test accuracy (%) with the λ used, rows in a fixed order."""
    out = []
    for (kind, scope), rows in frame.groupby(["model", "scope"], sort=False):
        dense = rows["dense_test_accuracy"].iloc[0]
        order = [label_of(m, u, k) for k in sorted(set(rows["steps"])) for _, m, u in VARIANTS]
        cells: dict[str, dict[str, str]] = {}
        for row in rows.to_dict("records"):
            label = label_of(row["method"], row["update"], row["steps"])
            lam = row["damping"]
            text = f"{100 * row['test_accuracy']:.1f}"
            if lam == lam and lam is not None:  # not NaN: show the λ used
                text += f" ({lam:.0e})".replace("e-0", "e-")
            cells.setdefault(label, {})[f"{row['sparsity']:.0%}"] = text
        table = pd.DataFrame.from_dict(cells, orient="index")
        table = table.loc[[o for o in order if o in table.index]]
        table = table[[f"{s:.0%}" for s in SPARSITIES]]
        out.append(
            f"**digits {kind.upper()}, {scope} scope** — test accuracy (%) and (λ); dense "
            f"{dense * 100:.1f} %\n\n" + markdown(table) + "\n"
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
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    frame = pd.concat([claim_frame(kind, args)[0] for kind in ("mlp", "cnn")], ignore_index=True)
    text = (
        f"m = {args.num_samples} per-example gradients (empirical Fisher), WoodFisher blocks of "
        f"B = {args.block_size}; λ ∈ {{1e-1, …, 1e-7}} chosen per (method, update, scope, "
        f"sparsity) by the training loss after pruning, and reused for k = {args.steps}; "
        f"{torch.get_num_threads()} CPU threads, "
        f"{time.perf_counter() - start:.0f} s\n\n" + tables(frame)
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        frame.to_csv(args.out.rsplit(".", 1)[0] + ".csv", index=False)


if __name__ == "__main__":
    main()
