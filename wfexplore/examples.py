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
    batches, held = [], 0
    for batch in data:
        if not (isinstance(batch, tuple | list) and len(batch) >= 2):
            raise TypeError(f"{name} must yield (inputs, targets) batches, like a DataLoader")
        x, y = batch[0], batch[1]
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
