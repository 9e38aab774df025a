"""A memory budget for decoded images: the pixels one model holds decoded at once, over all
its requests. A request whose image does not fit waits for others to finish their images
(preprocessed, the decoded pixels are freed); past `wait` seconds it gets a 503. So N
concurrent large images cost at most the budget, not N times an image.

Only a request's first image waits; its further images are counted without waiting, so
two requests that each hold part of the budget never wait for each other. A request waits in
its decoding thread (decoding runs in asyncio's default executor): the requests holding the
budget do not need another thread to finish, so the waiters cannot starve them.

The budget bounds the memory only if freed images go back to the system: glibc raises its
mmap threshold after each large free, so that later large blocks (Pillow's 16 MB image
blocks) come from per-thread arenas, which keep them; each decoding thread then keeps its
own peak, and 8 threads decoding in turn grow the process as 8 images at once would. A
fixed threshold (`MMAP_THRESHOLD`, unless MALLOC_MMAP_THRESHOLD_ is set) keeps blocks of
8 MB and more mapped, and unmapped as soon as they are freed."""
import ctypes
import ctypes.util
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from fastapi import status
from mlserver.errors import MLServerError

MMAP_THRESHOLD = 8 * 2**20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter (malloc.h)

Reserve = Callable[[int], None]


class BudgetExhausted(MLServerError):
    def __init__(self, pixels: int, budget: int, wait: float):
        super().__init__(
            f"the server is decoding too many image pixels at once: {pixels} more did not fit "
            f"in the budget of {budget} within {wait:g} s (parameters.extra.image_pixel_budget, "
            "by default MLSERVER_NPU_IMAGE_PIXEL_BUDGET); retry later",
            status.HTTP_503_SERVICE_UNAVAILABLE,
        )


def _map_large_blocks() -> None:
    """Once per process: glibc's mmap threshold fixed at MMAP_THRESHOLD (see above)."""
    global _MAPPED
    if _MAPPED or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    _MAPPED = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):  # not glibc: its own allocator's policy stays
        pass


_MAPPED = False


class PixelBudget:
    def __init__(self, pixels: int, wait: float):
        self.pixels = pixels
        self.wait = wait
        self._free = pixels
        self._changed = threading.Condition()
        _map_large_blocks()

    @property
    def held(self) -> int:
        return self.pixels - self._free

    @contextmanager
    def holding(self) -> Iterator[Reserve]:
        """Around the decoding and preprocessing of one request's images (in a worker
        thread): `reserve(pixels)` before each image is decoded; all is released at the end."""
        taken = 0

        def reserve(pixels: int) -> None:
            nonlocal taken
            pixels = min(pixels, self.pixels)
            with self._changed:
                if not taken and not self._changed.wait_for(
                    lambda: self._free >= pixels, timeout=self.wait
                ):
                    raise BudgetExhausted(pixels, self.pixels, self.wait)
                self._free -= pixels
                taken += pixels

        try:
            yield reserve
        finally:
            if taken:
                self._release(taken)

    def _release(self, pixels: int) -> None:
        with self._changed:
            self._free += pixels
            self._changed.notify_all()
