"""The gradient matrix on disk: low-rank blocks read from a file give the numbers of G held in
memory; the file lives as long as the curvature (or is kept); the factor budget recomputes;
a disk without room is refused; ``"auto"`` goes to disk only when memory does not fit."""

import gc
import logging
import types

import pytest
import torch

import wfexplore
from wfexplore.curvature import LowRankCurvature, estimate_curvature, from_gradients, gradient_files
from wfexplore.curvature.gradient_files import GradientFile, check_gradient_store
from wfexplore.params import AnalysedParameter, ParameterLayout
from wfexplore.pruning import PruningSettings, prune_model

LAM = 1e-3


@pytest.fixture(autouse=True)
def small_windows(monkeypatch, tmp_path):
    """Windows of a few columns (5 of 40 float64 rows: reads cross them), the cache under
    tmp_path."""
    monkeypatch.setattr(gradient_files, "WINDOW_BYTES", 5 * 40 * 8)
    monkeypatch.setenv("WFEXPLORE_CACHE_DIR", str(tmp_path / "cache"))


def files(folder):
    return sorted(folder.glob("gradients-*.bin")) if folder.exists() else []


def close_relative(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-12) -> None:
    assert float((a - b).abs().max()) <= tol * float(b.abs().max())


def lowrank(model, loader, store, block_size=16):
    return estimate_curvature(
        model, loader, representation="lowrank", block_size=block_size, num_samples=40,
        progress=False, gradient_store=store,
    )  # fmt: skip


@pytest.mark.parametrize("block_size", [16, 5, "layer"])
def test_the_disk_backed_curvature_equals_the_one_in_memory(bn_cnn, cnn_loader, tmp_path,
                                                            block_size):  # fmt: skip
    held = lowrank(bn_cnn, cnn_loader, "memory", block_size).damped(LAM)
    disk = lowrank(bn_cnn, cnn_loader, tmp_path, block_size).damped(LAM)
    assert isinstance(disk.gradients, GradientFile) and isinstance(held.gradients, torch.Tensor)
    assert files(tmp_path) == [disk.gradients.path]
    v = torch.randn(held.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in ("diag", "inverse_diag"):
        close_relative(getattr(disk, name)(), getattr(held, name)())
    close_relative(disk.mv(v), held.mv(v))
    close_relative(disk.inverse_mv(v), held.inverse_mv(v))
    for b in held.layout.blocks:
        positions = [b.size - 1, 0, b.size // 2]
        close_relative(disk.columns(b.index, positions), held.columns(b.index, positions))
        close_relative(
            disk.inverse_columns(b.index, positions), held.inverse_columns(b.index, positions)
        )
        close_relative(disk.block(b.index), held.block(b.index))
    same_size = [b.index for b in held.layout.blocks if b.size == held.layout.blocks[0].size]
    close_relative(disk.inverse_blocks(same_size), held.inverse_blocks(same_size))


@pytest.mark.parametrize(("block_size", "update"), [("layer", "summed"), (16, "group")])
def test_pruning_through_the_disk_store_gives_the_same_masks_and_weights(
    bn_cnn, cnn_loader, tmp_path, block_size, update
):
    settings = PruningSettings("woodfisher", damping=LAM, num_samples=40, block_size=block_size,
                               representation="lowrank")  # fmt: skip
    common = {"data": cnn_loader, "update": update, "progress": False}
    held = prune_model(bn_cnn, settings, 0.5, gradient_store="memory", **common)
    disk = prune_model(bn_cnn, settings, 0.5, gradient_store=tmp_path, **common)
    assert disk.plan.gradient_store == tmp_path and disk.plan.disk_bytes == 40 * 219 * 8
    assert held.plan.disk_bytes == 0
    for name, keep in held.masks.items():
        assert torch.equal(disk.masks[name], keep)
    close_relative(disk.layout.flatten(disk.model), held.layout.flatten(held.model))
    gc.collect()
    assert files(tmp_path) == []  # removed with the curvature


def test_the_file_lives_with_the_curvature_or_is_kept(tmp_path, caplog):
    layout = ParameterLayout([AnalysedParameter("w.weight", "w", "Linear", (30,), 0)], 8)
    g = torch.randn(12, 30, dtype=torch.float64)
    curv = from_gradients(iter(g.split(5)), layout, "lowrank", num_samples=12,
                          gradient_store=tmp_path)  # fmt: skip
    path = curv.gradients.path
    assert files(tmp_path) == [path] and path.stat().st_size == g.numel() * 8
    del curv
    gc.collect()
    assert not path.exists()
    closed = from_gradients(g, layout, "lowrank", gradient_store=tmp_path)
    assert files(tmp_path) == [closed.gradients.path]
    closed.close()
    assert files(tmp_path) == []
    kept = GradientFile(12, 30, torch.float64, folder=tmp_path, keep=True)
    kept.append(g)
    curv = LowRankCurvature(layout, kept)
    torch.testing.assert_close(curv.diag(), (g**2).mean(0), rtol=1e-14, atol=0)
    with caplog.at_level(logging.INFO, logger="wfexplore"):
        curv.close()
    assert kept.path.exists() and str(kept.path) in caplog.text
    assert torch.equal(torch.from_file(str(kept.path), size=g.numel(), dtype=g.dtype), g.ravel())


def test_a_factor_budget_recomputes_the_factors_with_the_same_numbers():
    layout = ParameterLayout([AnalysedParameter("w.weight", "w", "Linear", (60,), 0)], 7)
    g = torch.randn(10, 60, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    every = LowRankCurvature(layout, g).damped(LAM)
    one = LowRankCurvature(layout, g, max_factor_bytes=10 * 10 * 8).damped(LAM)
    v = torch.randn(60, dtype=torch.float64)
    assert torch.equal(one.inverse_diag(), every.inverse_diag())
    assert torch.equal(one.inverse_mv(v), every.inverse_mv(v))
    assert torch.equal(one.inverse_columns(5, [0, 3]), every.inverse_columns(5, [0, 3]))
    assert len(one.factors(LAM)) == 1 and len(every.factors(LAM)) == layout.num_blocks
    assert one.memory_bytes() == g.numel() * 8 + 10 * 10 * 8


def test_a_disk_without_room_is_refused_before_any_gradient(mlp, tmp_path, monkeypatch):
    room = types.SimpleNamespace(total=10**6, used=10**6 - 100, free=100)
    monkeypatch.setattr(gradient_files.shutil, "disk_usage", lambda path: room)
    with pytest.raises(OSError, match=rf"{tmp_path} has .* GB free.*gradient_store="):
        GradientFile(16, 45, torch.float64, folder=tmp_path)

    class Untouchable:
        """The first batch may be looked at (to size activations), no more."""

        def __iter__(self):
            yield torch.randn(4, 6, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
            raise AssertionError("data read past its first batch before the plan was checked")

    with pytest.raises(OSError, match=str(tmp_path)):
        estimate_curvature(mlp, Untouchable(), representation="lowrank", num_samples=16,
                           progress=False, gradient_store=tmp_path)  # fmt: skip
    assert files(tmp_path) == []


def auto_store(max_memory_gb: float):
    """m = 8, d = 400 in blocks of 4: G is 25,600 bytes, each m × m factor 512."""
    layout = ParameterLayout([AnalysedParameter("w.weight", "w", "Linear", (400,), 0)], 4)
    g = torch.randn(8, 400, dtype=torch.float64)
    curv = from_gradients(iter(g.split(3)), layout, "lowrank", num_samples=8,
                          max_memory_gb=max_memory_gb)  # fmt: skip
    return curv, g


def test_auto_writes_to_disk_only_when_memory_does_not_fit(tmp_path):
    held, g = auto_store(1.0)
    assert isinstance(held.gradients, torch.Tensor)
    on_disk, _ = auto_store(40_000 / 2**30)  # in memory ≈ 46 kB, on disk ≈ 21 kB
    assert isinstance(on_disk.gradients, GradientFile)
    assert on_disk.gradients.path.parent == tmp_path / "cache" / "gradients"
    whole = from_gradients(g, held.layout, "lowrank", max_memory_gb=40_000 / 2**30)
    assert isinstance(whole.gradients, torch.Tensor)  # given whole: in memory already


def test_the_plan_places_the_gradients_and_suggests_the_disk(mlp, tmp_path):
    settings = PruningSettings("woodfisher", num_samples=16, block_size="layer",
                               representation="lowrank")  # fmt: skip
    g_bytes = 16 * 45 * 8
    held = wfexplore.plan(mlp, settings, max_memory_gb=1.0, gradient_store="memory")
    disk = wfexplore.plan(mlp, settings, max_memory_gb=1.0, gradient_store=tmp_path)
    assert set(held.layers["strategy"]) == {"in memory"}
    assert set(disk.layers["strategy"]) == {"gradient store on disk"}
    assert disk.disk_bytes == g_bytes and int(disk.layers["gradient_bytes"].sum()) == 0
    window = 16 * 12 * 8  # the patched window: 12 columns of 16 float64 rows in 1,600 bytes
    assert disk.peak_bytes == held.peak_bytes - g_bytes + window
    assert f"G on disk: {g_bytes / 2**30:.3g} GB in {tmp_path}" in disk.summary()
    budget = (held.peak_bytes + disk.peak_bytes) / 2 / 2**30
    refused = wfexplore.plan(mlp, settings, max_memory_gb=budget, gradient_store="memory")
    assert not refused.fits and "gradient_store='disk'" in refused.suggestions()
    auto = wfexplore.plan(mlp, settings, max_memory_gb=budget)
    assert auto.fits and auto.gradient_store == "disk" and auto.disk_bytes == g_bytes
    dense = PruningSettings("woodfisher", num_samples=16, block_size="layer",
                            representation="dense")  # fmt: skip
    message = wfexplore.plan(mlp, dense, max_memory_gb=budget).suggestions()
    assert "representation='lowrank', gradient_store='disk'" in message


def test_store_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match="gradient_store must be one of"):
        check_gradient_store("memroy")
    assert check_gradient_store("./grads") == "./grads"
    assert check_gradient_store(tmp_path) == tmp_path


def test_rows_written_in_any_order_read_back_as_g(tmp_path):
    """Positioned writes (each rank's rows in place, the others' later) make the same G."""
    g = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    store = GradientFile(6, 5, torch.float64, folder=tmp_path)
    for start, stop in ((3, 5), (0, 2), (5, 6), (2, 3)):
        store.write_rows(start, g[start:stop])
    assert store.filled == 6
    assert torch.equal(store.read_rows(1, 4), g[1:4])
    out = torch.empty(6, 3, dtype=torch.float64)
    store.read(2, 5, out)
    assert torch.equal(out, g[:, 2:5])
    with pytest.raises(ValueError, match="outside the num_samples=6 rows"):
        store.write_rows(5, g[:2])
    store.close()
