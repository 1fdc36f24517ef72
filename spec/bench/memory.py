"""Peak memory of one run: CUDA allocator statistics, or the process's resident memory sampled on the CPU."""

from __future__ import annotations

import os
import threading

import torch


class PeakMemory:
    """Peak memory above the level at entry, in MB: CUDA allocator statistics, or resident memory
    sampled every millisecond on the CPU (a sampled peak can miss a spike shorter than that)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb = 0.0

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self._start = self._rss_mb()
            self._high = self._start
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.001):
            self._high = max(self._high, self._rss_mb())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._start
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self._high, self._rss_mb()) - self._start
