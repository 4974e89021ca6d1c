"""The ``wfexplore`` command."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from wfexplore import servers

DIGITS_KINDS = ("mlp", "cnn")  # wfexplore.training.DIGITS_KINDS, without importing torch
DEFAULT_REPORT = "wfexplore-report.html"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _damping(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"expected a finite positive number such as 1e-4, got {text!r}"
        )
    return value


def _block_size(text: str):
    if text in ("layer", "model"):
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer, 'layer' or 'model', got {text!r}"
        )
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected a port number from 1 to 65535, got {text!r} (omit --port for a free one)"
        )
    return value


def _report_path(text: str) -> Path:
    """A file the report can be written to, checked before any work: not a folder, under a
    folder that exists (or can be made) and is writable."""
    path = Path(text).expanduser()
    if not text or path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is a folder, not a file; give a file name such as {path / DEFAULT_REPORT}"
        )
    base = path.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise argparse.ArgumentTypeError(
            f"cannot write {text!r}: {base} is a file, so no folder can be made there"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: the file is read-only")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".wfexplore-report-check-")
    except OSError as err:
        raise argparse.ArgumentTypeError(
            f"cannot write {text!r}: {base} is not writable ({err.strerror or err})"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return path


def _sparsities(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated fractions such as 0.5,0.8,0.9, got {text!r}"
        ) from None
    if not values or not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"sparsities must lie in [0, 1), got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wfexplore", description="See second-order pruning at work."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="train or load a digits model, compare its Fisher and Hessian layer by layer, "
        "compare pruning methods and write an HTML report",
    )
    demo.add_argument("--model", choices=DIGITS_KINDS, default="mlp")
    demo.add_argument("--num-samples", type=_positive_int, default=512, help="gradient samples m")
    demo.add_argument("--damping", type=_damping, default=1e-4, help="λ added to both matrices")
    demo.add_argument("--block-size", type=_block_size, default=64, help="B, 'layer' or 'model'")
    demo.add_argument(
        "--hessian-examples",
        type=_positive_int,
        default=512,
        help="examples in the Hessian's loss",
    )
    demo.add_argument("--retrain", action="store_true", help="ignore the cached model")
    demo.add_argument(
        "--sparsities",
        type=_sparsities,
        default=[0.5, 0.7, 0.8, 0.9],
        help="sparsities of the pruning comparison (default: %(default)s)",
    )
    demo.add_argument(
        "--report",
        type=_report_path,
        default=DEFAULT_REPORT,  # a string, so that the check above runs on it too
        help="where to write the HTML report (default: ./%(default)s)",
    )
    lab = commands.add_parser(
        "lab", help="copy the notebooks to a working folder and open JupyterLab on them"
    )
    lab.add_argument(
        "folder", nargs="?", default=servers.DEFAULT_FOLDER, help="working folder (%(default)s)"
    )
    lab.add_argument("--port", type=_port, default=None, help="port on 127.0.0.1 (default: free)")
    lab.add_argument("--no-browser", action="store_true", help="print the URL, open no browser")
    lab.add_argument(
        "--overwrite", action="store_true", help="replace modified copies with the shipped ones"
    )
    teach = commands.add_parser("teach", help="the OBD/OBS teacher as a Voilà page (no code)")
    teach.add_argument("--port", type=_port, default=None, help="port on 127.0.0.1 (default: free)")
    teach.add_argument("--no-browser", action="store_true", help="print the URL, open no browser")
    teach.add_argument(
        "--theme",
        choices=servers.THEMES,
        default="light",
        help="the page's theme, and its preheated kernel's (a visit may still ask ?theme=)",
    )
    return parser


def demo(args: argparse.Namespace) -> int:
    import pandas as pd
    from torch.utils.data import DataLoader

    from wfexplore.data import digits_loaders
    from wfexplore.experiments import compare_fisher_and_hessian, compare_pruning
    from wfexplore.report import model_table, write_report
    from wfexplore.training import evaluate, pretrained_digits_model

    start = time.perf_counter()
    model = pretrained_digits_model(args.model, retrain=args.retrain)
    train, test = digits_loaders(batch_size=256)
    accuracy = evaluate(model, test)["accuracy"]
    print(f"digits {args.model}: test accuracy {accuracy:.3f}")
    result = compare_fisher_and_hessian(
        model,
        train,
        block_size=args.block_size,
        num_samples=args.num_samples,
        damping=args.damping,
        hessian_examples=args.hessian_examples,
    )
    print(result.fisher.layout.table().to_string(index=False))
    print(
        f"\nEmpirical Fisher (m={args.num_samples}) vs exact Hessian "
        f"({args.hessian_examples} examples), λ={result.fisher.damping:g}, "
        f"blocks of {args.block_size}; medians over each layer's blocks:"
    )
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 200):
        print(result.layers.to_string(index=False))

    ordered = DataLoader(train.dataset, batch_size=256)  # fixed order: the sweep cache keys on it
    pruning = compare_pruning(
        model,
        ordered,
        test,
        sparsities=args.sparsities,
        damping=args.damping,
        num_samples=args.num_samples,
        block_size=args.block_size,
    )
    print(
        f"\nOne-shot global pruning (λ={args.damping:g}, m={args.num_samples}, WoodFisher blocks "
        f"of {args.block_size}, summed OBS update); test accuracy:"
    )
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 200):
        print(pruning.summary("accuracy").to_string(index=False))
    for sentence in pruning.findings():
        print(sentence)
    path = write_report(
        args.report,
        title=f"wfexplore demo: digits {args.model}",
        model_info=model_table(
            model,
            f"digits {args.model}",
            train_examples=len(train.dataset),
            test_examples=len(test.dataset),
            accuracy=accuracy,
            analysed=result.fisher.layout.dim,
        ),
        fisher_hessian=result,
        pruning=pruning,
        tables={
            "Sweep (one row per method and sparsity)": pruning.sweep.drop(
                columns=["cached"], errors="ignore"
            ),
            "Per-layer sensitivity (each layer pruned alone)": pruning.sensitivity,
        },
    )
    print(f"\nreport: {path.resolve()}")
    print(f"done in {time.perf_counter() - start:.1f} s")
    return 0


def lab(args: argparse.Namespace) -> int:
    try:
        return servers.run_lab(
            args.folder, port=args.port, open_browser=not args.no_browser, overwrite=args.overwrite
        )
    except servers.PortInUse as err:
        print(f"wfexplore lab: error: {err}", file=sys.stderr)
        return 2


def teach(args: argparse.Namespace) -> int:
    try:
        return servers.run_teach(port=args.port, open_browser=not args.no_browser, theme=args.theme)
    except servers.PortInUse as err:
        print(f"wfexplore teach: error: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return {"demo": demo, "lab": lab, "teach": teach}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
