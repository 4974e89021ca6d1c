"""The examples a computation uses: the first ``count`` of a loader, held fixed as batches."""

from __future__ import annotations

from collections.abc import Iterable

from wfexplore._checks import positive_int


def take_examples(data: Iterable | None, count: int | None, name: str = "data") -> list[tuple]:
    """The first ``count`` examples of ``data`` (all of them for ``None``) as ``(x, y)`` batches.

    Refuses a missing loader, batches that are not ``(inputs, targets)``, no examples, and
    fewer examples than ``count``, each with the argument ``name`` and a fix.
    """
    if data is None:
        raise ValueError(f"{name}: a data loader is needed here; pass {name}=<DataLoader>")
    if count is not None:
        positive_int(count, "count", "or None for every example")
    elif not _finite(data):
        raise ValueError(
            f"{name} has no length (an iterator or generator?), so taking all of it might never "
            "end; pass the number of examples to use (e.g. num_examples=512) or a list"
        )
    batches, held = [], 0
    for batch in data:
        if not (isinstance(batch, tuple | list) and len(batch) >= 2):
            raise TypeError(f"{name} must yield (inputs, targets) batches, like a DataLoader")
        x, y = batch[0], batch[1]
        if getattr(x, "ndim", 0) == 0 or getattr(y, "ndim", 0) == 0:
            raise ValueError(
                f"{name}: inputs and targets need a batch dimension, got shapes "
                f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(y, 'shape', ()))}; for "
                "one example use x.unsqueeze(0) and y.unsqueeze(0)"
            )
        take = x.shape[0] if count is None else min(x.shape[0], count - held)
        batches.append((x[:take], y[:take]))
        held += take
        if count is not None and held >= count:
            break
    if held == 0:
        raise ValueError(f"{name}: the loader yielded no examples; pass a loader with data")
    if count is not None and held < count:
        raise ValueError(
            f"{name} holds only {held} examples but {count} are needed (num_samples × "
            "batch_size); lower num_samples or batch_size"
        )
    return batches


def _finite(data) -> bool:
    """Whether ``data`` has a known length (a list, a DataLoader over a sized dataset)."""
    try:
        len(data)
    except TypeError:
        return False
    return True
