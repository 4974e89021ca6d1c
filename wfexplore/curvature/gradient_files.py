"""Where the m × d gradient matrix G lives: held in memory, or in a file on disk.

Both are written row chunk by row chunk (``append``) and read by columns: ``read(a, z, out)``
copies G[:, a:z] into a caller's buffer, ``select(columns)`` gives G[:, columns]. A
:class:`GradientFile` stores G row-major in the gradients' dtype: row i of d entries starts at
byte i·d·itemsize. Rows are appended with plain sequential writes; G[:, a:z] is read with m
positional reads of (z − a)·itemsize bytes into a reused window of ``WINDOW_BYTES`` (no memory
map: the pages of a mapped 26 GB file would count in the process's memory). The file is removed
when its owner is closed or garbage-collected, unless ``keep=True`` (then its path is logged).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import torch

LOG = logging.getLogger("wfexplore")
GRADIENT_STORES = ("auto", "memory", "disk")
WINDOW_BYTES = 64 * 2**20
"""Bytes of the window that column ranges of a gradient file are read through."""


def window_columns(num_samples: int, dim: int, itemsize: int) -> int:
    """Columns of the read window: as many as ``WINDOW_BYTES`` hold for m rows (at most d)."""
    return max(1, min(dim, WINDOW_BYTES // (num_samples * itemsize)))


def check_gradient_store(value) -> str | os.PathLike:
    """``"auto"``, ``"memory"``, ``"disk"``, or a folder: an ``os.PathLike`` or a string with
    a path separator or ``~`` (so that a misspelt name is not taken for a folder)."""
    if value in GRADIENT_STORES or isinstance(value, os.PathLike):
        return value
    if isinstance(value, str) and any(c in value for c in ("/", os.sep, "~")):
        return value
    raise ValueError(
        f"gradient_store must be one of {list(GRADIENT_STORES)} or a folder (a pathlib.Path, or "
        f"a string such as './gradients' or '/scratch/me'), got {value!r}"
    )


def wants_disk(gradient_store) -> bool:
    """Whether ``gradient_store`` asks for the disk: ``"disk"`` or a folder path."""
    return check_gradient_store(gradient_store) not in ("auto", "memory")


def store_folder(gradient_store) -> Path:
    """The folder a disk store writes in: the one named, else ``cache_dir()/gradients``
    (the system's temporary folder where that cannot be created)."""
    if wants_disk(gradient_store) and gradient_store != "disk":
        return Path(gradient_store).expanduser()
    from wfexplore.training import cache_dir

    folder = cache_dir() / "gradients"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return Path(tempfile.gettempdir())
    return folder


def free_disk_bytes(folder: Path) -> int:
    """Free bytes on the file system of ``folder`` (of its nearest existing parent)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    return shutil.disk_usage(existing).free


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse a gradient file of ``needed`` bytes that ``folder`` has no room for."""
    free = free_disk_bytes(folder)
    if needed > free:
        raise OSError(
            f"gradient store: {folder} has {free / 2**30:.3g} GB free, but the m × d gradient "
            f"matrix needs {needed / 2**30:.3g} GB there; free space in it, name a folder with "
            "room (gradient_store='/path/to/folder'), use fewer samples (num_samples), or hold "
            "the gradients in memory (gradient_store='memory')"
        )


class HeldGradients:
    """G in memory: a (m, d) tensor, given whole or filled row chunk by row chunk."""

    def __init__(self, rows: torch.Tensor, filled: int | None = None):
        self.rows = rows
        self.num_samples, self.dim = rows.shape
        self.dtype, self.device = rows.dtype, rows.device
        self.filled = self.num_samples if filled is None else filled

    @property
    def shape(self) -> tuple[int, int]:
        return self.num_samples, self.dim

    @classmethod
    def empty(cls, num_samples: int, dim: int, dtype, device) -> HeldGradients:
        return cls(torch.empty(num_samples, dim, dtype=dtype, device=device), filled=0)

    def append(self, chunk: torch.Tensor) -> None:
        stop = _check_room(self, chunk)
        self.rows[self.filled : stop] = chunk
        self.filled = stop

    def write_rows(self, start: int, chunk: torch.Tensor) -> None:
        """Rows start … start + c − 1 from ``chunk`` (c, d) (each row once)."""
        _check_rows(self, start, chunk)
        self.rows[start : start + chunk.shape[0]] = chunk
        self.filled += chunk.shape[0]

    def read_rows(self, start: int, stop: int) -> torch.Tensor:
        return self.rows[start:stop]

    def read(self, start: int, stop: int, out: torch.Tensor) -> None:
        out.copy_(self.rows[:, start:stop])

    def select(self, columns: torch.Tensor) -> torch.Tensor:
        return self.rows[:, columns.to(self.device)]

    def memory_bytes(self) -> int:
        return self.rows.numel() * self.rows.element_size()

    def close(self) -> None:
        """Nothing to release: the tensor goes with its last reference."""


class GradientFile:
    """G on disk: ``num_samples`` rows of ``dim`` entries of ``dtype``, row-major, in a new
    file in ``folder`` (see :func:`store_folder`); results are made on ``device``."""

    def __init__(
        self,
        num_samples: int,
        dim: int,
        dtype: torch.dtype = torch.float32,
        *,
        folder: str | os.PathLike | None = None,
        device: torch.device | str = "cpu",
        keep: bool = False,
    ):
        self.num_samples, self.dim, self.dtype = num_samples, dim, dtype
        self.device, self.keep = torch.device(device), keep
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        folder = store_folder("disk" if folder is None else folder)
        folder.mkdir(parents=True, exist_ok=True)
        check_free_space(folder, self.disk_bytes)
        handle, name = tempfile.mkstemp(prefix="gradients-", suffix=".bin", dir=folder)
        self.path = Path(name)
        self.file = os.fdopen(handle, "r+b", buffering=0)  # closed by _release
        self.filled = 0
        columns = window_columns(num_samples, dim, self.itemsize)
        self._window = torch.empty(num_samples, columns, dtype=dtype)
        self._bytes = self._window.view(torch.uint8).numpy()  # the same memory, as bytes
        self._span = (0, 0)  # the columns [a, z) the window holds
        self._finalizer = weakref.finalize(self, _release, self.file, self.path, keep)
        LOG.info("gradient store: %s", self)

    @property
    def shape(self) -> tuple[int, int]:
        return self.num_samples, self.dim

    @property
    def disk_bytes(self) -> int:
        return self.num_samples * self.dim * self.itemsize

    def append(self, chunk: torch.Tensor) -> None:
        """Write the rows of ``chunk`` (c, d) after those written so far."""
        self.write_rows(self.filled, chunk)

    def write_rows(self, start: int, chunk: torch.Tensor) -> None:
        """Write the rows of ``chunk`` (c, d) as rows start … start + c − 1 (each row once:
        ``filled`` counts the rows written)."""
        _check_rows(self, start, chunk)
        rows = chunk.detach().to(device="cpu", dtype=self.dtype).contiguous()
        data = memoryview(rows.view(torch.uint8).numpy()).cast("B")
        self.file.seek(start * self.dim * self.itemsize)
        while data:
            data = data[self.file.write(data) :]
        self.filled += chunk.shape[0]

    def read_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows start … stop − 1 of G, (stop − start, d) in memory."""
        out = torch.empty(stop - start, self.dim, dtype=self.dtype)
        size = out.numel() * self.itemsize
        self.file.seek(start * self.dim * self.itemsize)
        if self.file.readinto(memoryview(out.view(torch.uint8).numpy()).cast("B")) != size:
            raise OSError(f"gradient store: {self.path} is shorter than its {self!r}")
        return out

    def read(self, start: int, stop: int, out: torch.Tensor) -> None:
        """G[:, start:stop] into ``out`` (m, stop − start), of any dtype and device."""
        self._check_complete()
        width = self._window.shape[1]
        for a in range(start, stop, width):
            z = min(a + width, stop)
            a0 = self._load(a, z)
            out[:, a - start : z - start].copy_(self._window[:, a - a0 : z - a0])

    def select(self, columns: torch.Tensor) -> torch.Tensor:
        """G[:, columns] (m, k) on ``device``, read window by window over the columns' span."""
        self._check_complete()
        columns = columns.to("cpu")
        out = torch.empty(self.num_samples, len(columns), dtype=self.dtype)
        width = self._window.shape[1]
        span = (int(columns.min()), int(columns.max()) + 1) if len(columns) else (0, 0)
        for a in range(*span, width):
            inside = (columns >= a) & (columns < a + width)
            if inside.any():
                a0 = self._load(a, min(a + width, self.dim))
                out[:, inside] = self._window[:, columns[inside] - a0]
        return out.to(self.device)

    def memory_bytes(self) -> int:
        """Bytes held in memory: the read window only."""
        return self._window.numel() * self._window.element_size()

    def close(self) -> None:
        """Close the file and remove it (unless ``keep``)."""
        self._finalizer()

    def __repr__(self) -> str:
        return (
            f"GradientFile({self.num_samples} × {self.dim} {self.dtype}, {self.path}, "
            f"{self.disk_bytes / 2**30:.3g} GB{', kept' if self.keep else ''})"
        )

    def _load(self, start: int, stop: int) -> int:
        """Make the window hold columns [start, stop); return the first column it holds."""
        a0, z0 = self._span
        if a0 <= start and stop <= z0:
            return a0
        z = min(start + self._window.shape[1], self.dim)
        size = (z - start) * self.itemsize
        for i in range(self.num_samples):
            self.file.seek((i * self.dim + start) * self.itemsize)
            if self.file.readinto(self._bytes[i, :size]) != size:
                raise OSError(f"gradient store: {self.path} is shorter than its {self!r}")
        self._span = (start, z)
        return start

    def _check_complete(self) -> None:
        if self.filled != self.num_samples:
            raise ValueError(
                f"gradient store: {self.filled} of {self.num_samples} rows written to {self.path}"
            )


def _check_rows(store: HeldGradients | GradientFile, start: int, chunk: torch.Tensor) -> None:
    """Refuse rows start … start + c − 1 of ``chunk`` that are not of G's width or outside G."""
    if chunk.ndim != 2 or chunk.shape[1] != store.dim:
        raise ValueError(f"gradients: expected rows of {store.dim} entries, got {chunk.shape}")
    if not 0 <= start <= start + chunk.shape[0] <= store.num_samples:
        raise ValueError(
            f"gradients: rows {start}…{start + chunk.shape[0] - 1} are outside the "
            f"num_samples={store.num_samples} rows of {store!r}"
        )


def _check_room(store: HeldGradients | GradientFile, chunk: torch.Tensor) -> int:
    stop = store.filled + chunk.shape[0]
    if chunk.ndim != 2 or chunk.shape[1] != store.dim:
        raise ValueError(f"gradients: expected rows of {store.dim} entries, got {chunk.shape}")
    if stop > store.num_samples:
        raise ValueError(f"gradients: more than num_samples={store.num_samples} rows")
    return stop


def _release(file, path: Path, keep: bool) -> None:
    file.close()
    if keep:
        LOG.info("gradient store kept at %s", path)
    else:
        path.unlink(missing_ok=True)
