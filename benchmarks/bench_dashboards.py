"""How long a person waits on the dashboards, with the notebooks at their full settings.

    python benchmarks/bench_dashboards.py
    python benchmarks/bench_dashboards.py --only comparer sensitivity --cache-dir ~/.cache/wfx-bench

The same actions as tests/test_browser_dashboards.py (the scenarios of tests/browser.py), in
real JupyterLab and Voilà driven by headless Debian Chromium, but without
``WFEXPLORE_SMALL``: notebook 4's pruning comparer (sparsity slider, a method dropped and
taken back, the group OBS update, another number of steps: a new sweep, unless the
notebook's own sweep cached it), notebook 3's sensitivity explorer (layer
dropdown, log axes, all layers), notebook 2's Fisher explorer (damping λ slider) and the
Voilà teacher page (server start to address printed, first figure, w1 slider, the page
opened again at once, then with ``?theme=dark``). Each wait runs from the click or key press to
the figure's change, polled every 50 ms.

It prints a table: control, measured seconds, goal, and the machine's 1-minute load average
when it was measured (a busy machine makes every number longer). The model and sweep cache
is a fresh temporary folder unless ``--cache-dir`` names one (then a second run reads the
notebooks' sweeps from it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `tests` (tests/browser.py) is importable from the checkout

from tests import browser  # noqa: E402
from wfexplore.servers import copy_notebooks  # noqa: E402

SCENARIOS = {
    "comparer": browser.comparer_scenario,
    "sensitivity": browser.sensitivity_scenario,
    "fisher": browser.fisher_scenario,
}
ALL = [*SCENARIOS, "voila"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=ALL, default=ALL, help="what to measure")
    parser.add_argument("--cache-dir", type=Path, help="model and sweep cache (default: fresh)")
    parser.add_argument("--small", action="store_true", help="WFEXPLORE_SMALL=1 (a quick check)")
    parser.add_argument(
        "--timeout", type=float, default=1800, help="seconds one notebook may take (default 1800)"
    )
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--shots", type=Path, help="save screenshots of the dashboards here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    browser.TIMEOUT_MS = int(args.timeout * 1000)  # read at call time by the helpers
    os.environ.pop("WFEXPLORE_SMALL", None)  # the servers pass our environment on
    with tempfile.TemporaryDirectory(prefix="wfx-bench-dashboards-") as tmp:
        work = Path(tmp)
        cache = args.cache_dir.expanduser() if args.cache_dir else work / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        env = {"WFEXPLORE_CACHE_DIR": str(cache)}
        if args.small:
            env["WFEXPLORE_SMALL"] = "1"
        settings = "WFEXPLORE_SMALL=1" if args.small else "full settings"
        log = browser.LatencyLog(f"Dashboard latencies ({settings}; cache {cache})")
        failures = run(args, work, env, log)
    print()
    print(log.table())
    if args.out:
        log.write(args.out)
    for name, error in failures:
        print(f"\n{name} failed: {error}", file=sys.stderr)
    return 1 if failures else 0


def run(
    args: argparse.Namespace, work: Path, env: dict[str, str], log: browser.LatencyLog
) -> list[tuple[str, str]]:
    failures: list[tuple[str, str]] = []
    with browser.chromium(work / "chromium-profile") as context:
        browser.loopback_only(context)
        wanted = [name for name in SCENARIOS if name in args.only]
        if wanted:
            copy_notebooks(work / "notebooks")
            with browser.lab_server(work / "notebooks", work / "lab", env) as lab:
                for name in wanted:
                    page = context.new_page()
                    start = time.perf_counter()
                    try:
                        SCENARIOS[name](page, lab, log, args.shots)
                    except Exception as error:  # noqa: BLE001 - the others still run
                        failures.append((name, f"{error}\n{lab.log_tail()[-2000:]}"))
                    finally:
                        print(f"[{name}] {time.perf_counter() - start:.0f} s in all", flush=True)
                        page.close()
                        browser.shutdown_kernels(lab)
        if "voila" in args.only:
            page = context.new_page()
            try:
                with browser.voila_server(work / "voila", env=env) as server:
                    browser.voila_scenario(page, server, log)
            except Exception as error:  # noqa: BLE001
                failures.append(("voila", str(error)))
            finally:
                page.close()
    return failures


if __name__ == "__main__":
    sys.exit(main())
