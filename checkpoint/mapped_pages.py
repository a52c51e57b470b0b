"""Handing back the pages of memory-mapped checkpoint files once their data has been copied out.

`torch.load(mmap=True)` maps a whole checkpoint file; reading a tensor faults its pages in, and they
stay in the process's resident set (RssFile) for as long as the mapping lives, although they are
clean copies of the file that the kernel could drop. A consolidation that reads every partition of
an 11B checkpoint would end with the whole fp32 state resident a second time, beside the tensors it
built: what `ru_maxrss`, `top` and a scheduler that limits a job's RSS (Slurm's jobacct_gather) see.

`MappedPages.release(tensor)` tells the kernel the pages of `tensor` are not needed now
(`madvise(MADV_DONTNEED)`): the process's RSS drops by them, the file and the page cache keep them,
and touching them again faults them back in from the file. That is only harmless for file-backed
mappings never written to (torch's are MAP_PRIVATE and loading on CPU does not write to them): on
anonymous memory the same call would zero the data. So a range is released only if it lies inside
a mapping of one of the files registered with `track`, as /proc/self/maps listed it right after the
file was loaded; the caller keeps the loaded tensors alive while it releases, which keeps those
mappings in place. Where /proc/self/maps or madvise is missing (not Linux), release does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

import torch

PAGE_SIZE = mmap.PAGESIZE
MAPS = Path("/proc/self/maps")


def _madvise():
    """libc's madvise(addr, length, advice), or None where it or MADV_DONTNEED does not exist."""
    if not hasattr(mmap, "MADV_DONTNEED"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    function = getattr(libc, "madvise", None)
    if function is not None:
        function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        function.restype = ctypes.c_int
    return function


class MappedPages:
    """The address ranges of mapped checkpoint files; gives back pages read from them."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int]] = []
        self._madvise = _madvise() if MAPS.is_file() else None
        self.released_bytes = 0

    def track(self, path: str | Path) -> None:
        """Registers the current mappings of `path` (call right after loading it with mmap)."""
        if self._madvise is None:
            return
        target = os.path.realpath(path)
        for line in MAPS.read_text().splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5] == target:
                start, end = (int(address, 16) for address in fields[0].split("-"))
                self._ranges.append((start, end))

    def release(self, tensor: torch.Tensor) -> None:
        """Drops the resident pages under `tensor`'s data if they belong to a tracked file mapping.

        The range is widened to whole pages (within the mapping): a page shared with a neighbouring
        tensor that is still to be read is simply faulted in again from the file.
        """
        if self._madvise is None or tensor.numel() == 0 or not tensor.is_contiguous():
            return
        first = tensor.data_ptr()
        last = first + tensor.numel() * tensor.element_size()
        for start, end in self._ranges:
            if start <= first and last <= end:
                begin = first - first % PAGE_SIZE
                finish = min(end, -(-last // PAGE_SIZE) * PAGE_SIZE)
                if self._madvise(begin, finish - begin, mmap.MADV_DONTNEED) == 0:
                    self.released_bytes += finish - begin
                return
