"""What a block of test code leaves to the cyclic garbage collector: the collector is off inside the
block, and the list it yields is filled at the end with everything the collector then finds unreachable.
A memory bound that holds only because the collector happens to run is no bound (sds.refusal)."""

from __future__ import annotations

import gc
import types
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cyclic_garbage() -> Iterator[list[object]]:
    found: list[object] = []
    gc.collect()
    gc.disable()
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def frames_holding(objects: list[object], kind: type) -> list[types.FrameType]:
    """The frames among ``objects`` with a local variable of type ``kind`` (a request, say)."""
    return [
        o for o in objects if isinstance(o, types.FrameType) and any(isinstance(v, kind) for v in o.f_locals.values())
    ]
