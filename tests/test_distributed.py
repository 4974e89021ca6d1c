"""torch.distributed: two gloo processes on CPU give what one process gives on their samples
concatenated in rank order; ranks that disagree get an error each, never a hang."""

import datetime
import pickle
import time
import traceback
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from tests.conftest import make_mlp
from wfexplore.curvature import estimate_curvature
from wfexplore.params import ParameterLayout
from wfexplore.pruning import PruningSettings, layer_sensitivity, prune_model, sweep

WORLD = 2
PER_RANK = 24
TIMEOUT = datetime.timedelta(seconds=60)


def shards():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(WORLD * PER_RANK, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (WORLD * PER_RANK,), generator=g)
    return [
        (x[r * PER_RANK : (r + 1) * PER_RANK], y[r * PER_RANK : (r + 1) * PER_RANK])
        for r in range(WORLD)
    ], (x, y)


def loader(x, y):
    return DataLoader(TensorDataset(x, y), batch_size=8)


def compute(model, data, num_samples):
    """What each rank (or the single process) computes."""
    out = {}
    for representation in ("diagonal", "dense", "woodbury", "lowrank", "kfac"):
        block = "layer" if representation == "kfac" else 7
        layout = ParameterLayout.from_model(model, block_size=block)
        curv = estimate_curvature(
            model, data, representation=representation, layout=layout,
            num_samples=num_samples, progress=False,
        )  # fmt: skip
        out[representation] = curv.inverse_diag(1e-3)
    settings = PruningSettings("woodfisher", damping=1e-3, num_samples=num_samples, block_size=7)
    result = prune_model(model, settings, 0.5, data=data, progress=False)
    out["masks"] = result.masks
    out["weights"] = {n: p.detach().clone() for n, p in result.model.named_parameters()}
    out["accuracy"] = result.summary["accuracy"]
    out["loss"] = result.summary["loss"]
    frame = sweep(model, data, methods=["obd", "woodfisher", "kfac"], sparsities=[0.5],
                  dampings=[1e-3], num_samples=[num_samples], block_sizes=[7], cache=False,
                  progress=False)  # fmt: skip
    out["sweep"] = frame[["method", "accuracy", "loss", "predicted_delta_loss"]]
    table = layer_sensitivity(model, settings, data, sparsities=[0.5], progress=False)
    out["sensitivity"] = table[["predicted_delta_loss", "actual_delta_loss"]]
    return out


def on_disk(model, data, num_samples, store):
    """Low-rank blocks with the gradients in a file (in folder ``store``)."""
    layout = ParameterLayout.from_model(model, block_size="layer")
    common = {"representation": "lowrank", "progress": False}
    curv = estimate_curvature(model, data, layout=layout, num_samples=num_samples,
                              gradient_store=store, **common)  # fmt: skip
    out = {"inverse_diag": curv.inverse_diag(1e-3), "file_rows": curv.gradients.shape[0]}
    curv.close()
    settings = PruningSettings("woodfisher", damping=1e-3, num_samples=num_samples,
                               block_size="layer", representation="lowrank")  # fmt: skip
    result = prune_model(model, settings, 0.5, data=data, gradient_store=store, progress=False)
    out["weights"] = {n: p.detach().clone() for n, p in result.model.named_parameters()}
    return out


def shared_lowrank(model, data, num_samples):
    """Every question a low-rank curvature answers, and a group-OBS pruning through it."""
    layout = ParameterLayout.from_model(model, block_size=7)
    curv = estimate_curvature(model, data, representation="lowrank", layout=layout,
                              num_samples=num_samples, progress=False)  # fmt: skip
    v = torch.linspace(-1.0, 1.0, layout.dim, dtype=torch.float64)
    out = {
        "held_columns": curv.gradients.shape[1],
        "owned": list(curv.owned),
        "diag": curv.diag(),
        "mv": curv.mv(v),
        "inverse_diag": curv.inverse_diag(1e-3),
        "inverse_mv": curv.inverse_mv(v, 1e-3),
    }
    for b in layout.blocks:
        last = b.size - 1
        out[f"columns{b.index}"] = curv.columns(b.index, [0, last])
        out[f"block{b.index}"] = curv.block(b.index)
        out[f"inverse_columns{b.index}"] = curv.inverse_columns(b.index, [last, 0], 1e-3)
    whole = ParameterLayout.from_model(model, block_size="model")  # one block: one owner
    curv = estimate_curvature(model, data, representation="lowrank", layout=whole,
                              num_samples=num_samples, progress=False)  # fmt: skip
    out["model_held_columns"] = curv.gradients.shape[1]
    out["model_inverse_diag"] = curv.inverse_diag(1e-3)
    out["model_inverse_columns"] = curv.inverse_columns(0, [0, whole.dim - 1], 1e-3)
    settings = PruningSettings("woodfisher", damping=1e-3, num_samples=num_samples,
                               block_size=7, representation="lowrank")  # fmt: skip
    for update in ("summed", "group"):
        result = prune_model(model, settings, 0.5, data=data, update=update, progress=False)
        out[f"masks_{update}"] = result.masks
        out[f"weights_{update}"] = {
            n: p.detach().clone() for n, p in result.model.named_parameters()
        }
    return out


def _rank(rank, folder, scenario):
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD,
            timeout=TIMEOUT,
        )  # fmt: skip
        (parts, _) = shards()
        data = loader(*parts[rank])
        model = make_mlp()
        if scenario == "same":
            result = compute(model, data, WORLD * PER_RANK)
        elif scenario == "shared":
            result = shared_lowrank(model, data, WORLD * PER_RANK)
        elif scenario == "short":  # rank 1 has too few examples for its m / world_size
            part = data if rank == 0 else loader(*(t[: PER_RANK // 2] for t in parts[rank]))
            result = estimate_curvature(model, part, representation="lowrank",
                                        num_samples=WORLD * PER_RANK, progress=False)  # fmt: skip
        elif scenario == "disk":
            store = Path(folder) / f"gradients-of-rank{rank}"
            result = on_disk(model, data, WORLD * PER_RANK, store)
            result["left_on_disk"] = sorted(p.name for p in store.iterdir())
        else:  # rank 1 asks for other settings
            m = WORLD * PER_RANK if rank == 0 else WORLD * PER_RANK // 2
            result = estimate_curvature(model, data, num_samples=m, progress=False)
        (Path(folder) / f"rank{rank}.pkl").write_bytes(pickle.dumps(("ok", result)))
    except Exception as err:  # noqa: BLE001 - reported to the test through the file
        text = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
        (Path(folder) / f"rank{rank}.pkl").write_bytes(pickle.dumps(("error", text)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run(tmp_path, scenario):
    mp.start_processes(_rank, args=(str(tmp_path), scenario), nprocs=WORLD, start_method="spawn")
    return [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]


@pytest.mark.slow
def test_two_ranks_equal_one_process_on_the_concatenated_samples(tmp_path):
    results = run(tmp_path, "same")
    for status, value in results:
        assert status == "ok", value
    _, (x, y) = shards()
    single = compute(make_mlp(), loader(x, y), WORLD * PER_RANK)
    for _, ranked in results:
        for representation in ("diagonal", "dense", "woodbury", "lowrank", "kfac"):
            torch.testing.assert_close(
                ranked[representation], single[representation], rtol=1e-10, atol=0
            )
        for name, mask in single["masks"].items():
            assert torch.equal(ranked["masks"][name], mask), name
        for name, w in single["weights"].items():
            torch.testing.assert_close(ranked["weights"][name], w, rtol=1e-10, atol=1e-14)
        assert ranked["accuracy"] == pytest.approx(single["accuracy"], abs=1e-12)
        assert ranked["loss"] == pytest.approx(single["loss"], rel=1e-10)
        for table in ("sweep", "sensitivity"):
            pd.testing.assert_frame_equal(ranked[table], single[table], rtol=1e-9, atol=1e-14)


@pytest.mark.slow
def test_low_rank_blocks_are_shared_out_and_answer_as_one_process(tmp_path):
    """Each rank holds the columns of its own blocks only (together: every column once), and
    every forward, inverse and per-block question, and pruning with summed and group OBS
    updates, equals one process holding all of G."""
    results = run(tmp_path, "shared")
    for status, value in results:
        assert status == "ok", value
    _, (x, y) = shards()
    model = make_mlp()
    single = shared_lowrank(model, loader(x, y), WORLD * PER_RANK)
    dim = ParameterLayout.from_model(model, block_size=7).dim
    held = [ranked["held_columns"] for _, ranked in results]
    assert sum(held) == dim and all(0 < h < dim for h in held)
    assert sorted(ranked["model_held_columns"] for _, ranked in results) == [0, dim]
    owned = [ranked["owned"] for _, ranked in results]
    assert owned[0] + owned[1] == single["owned"]  # contiguous shares, in rank order
    for _, ranked in results:
        for key, value in single.items():
            if key.startswith(("masks", "weights")):
                for name, tensor in value.items():
                    if key.startswith("masks"):
                        assert torch.equal(ranked[key][name], tensor), (key, name)
                    else:
                        torch.testing.assert_close(
                            ranked[key][name], tensor, rtol=1e-10, atol=1e-14
                        )
            elif isinstance(value, torch.Tensor):
                torch.testing.assert_close(ranked[key], value, rtol=1e-10, atol=1e-14)


@pytest.mark.slow
def test_a_rank_short_of_data_stops_every_rank_at_once(tmp_path):
    """The short rank raises its own error; the other learns which rank failed instead of
    waiting in the next collective until the group's timeout."""
    start = time.perf_counter()
    results = run(tmp_path, "short")
    assert time.perf_counter() - start < TIMEOUT.total_seconds()
    (status0, text0), (status1, text1) = results
    assert status0 == status1 == "error"
    assert "rank 1 failed" in text0
    assert "rank 1 failed" not in text1


@pytest.mark.slow
def test_ranks_that_disagree_get_a_clear_error_each(tmp_path):
    results = run(tmp_path, "disagree")
    for status, value in results:
        assert status == "error"
        assert "ranks of the process group were given different settings" in value


@pytest.mark.slow
def test_two_ranks_with_the_gradients_on_disk_equal_one_process_in_memory(tmp_path):
    """Each rank writes its rows into a file, then receives every rank's rows in its own
    blocks' columns into a second: that file holds all m rows in rank order, and both are
    removed afterwards."""
    results = run(tmp_path, "disk")
    for status, value in results:
        assert status == "ok", value
    _, (x, y) = shards()
    single = on_disk(make_mlp(), loader(x, y), WORLD * PER_RANK, "memory")
    for _, ranked in results:
        assert ranked["file_rows"] == WORLD * PER_RANK
        torch.testing.assert_close(ranked["inverse_diag"], single["inverse_diag"], rtol=1e-10,
                                   atol=0)  # fmt: skip
        for name, w in single["weights"].items():
            torch.testing.assert_close(ranked["weights"][name], w, rtol=1e-10, atol=1e-14)
        assert ranked["left_on_disk"] == []
