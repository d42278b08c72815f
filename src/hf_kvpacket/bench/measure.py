"""Measuring instruments of the benchmark: clocks, peak memory, disk bandwidth, machine description and load.

Everything here is device-agnostic: on a CUDA device the clock synchronises and records CUDA events (the reported
time is wall-clock between synchronised points, the events give the device-side time of the same span), and peak
memory is `torch.cuda.max_memory_allocated`; on a CPU the clock is `time.perf_counter` and peak memory is the
process' peak resident set above its level at the start of the block (freed heap pages are first handed back to the
OS with `malloc_trim`, then the kernel's high-water mark is reset through `/proc/self/clear_refs`).
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

# ---------------------------------------------------------------------------------------------------------- clock


class Clock:
    """Wall-clock marks that are exact on any device.

    `mark()` synchronises the device (a no-op on CPU) and returns `time.perf_counter()`; on CUDA it also records an
    event, so `gpu_seconds(a, b)` gives the device time between two marks.

    Examples
    --------
    >>> clock = Clock(torch.device("cpu"))
    >>> a = clock.mark(); b = clock.mark()
    >>> b - a >= 0
    True
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self._events: dict[float, Any] = {}

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def mark(self) -> float:
        self.sync()
        t = time.perf_counter()
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._events[t] = event
        return t

    def gpu_seconds(self, a: float, b: float) -> float | None:
        """Device time between the marks `a` and `b` (CUDA events), `None` on CPU."""
        if not self.cuda or a not in self._events or b not in self._events:
            return None
        self._events[b].synchronize()
        return self._events[a].elapsed_time(self._events[b]) / 1000.0

    def forget(self) -> None:
        self._events.clear()


# ---------------------------------------------------------------------------------------------------------- memory

_LIBC = None


def _malloc_trim() -> None:
    global _LIBC
    try:
        if _LIBC is None:
            _LIBC = ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory allocated inside a `with` block, above the level at its start (bytes in `.peak`).

    CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`. CPU: peak resident set (`VmHWM`, reset
    through `/proc/self/clear_refs`) minus the resident set at the start, after `malloc_trim(0)` returned free heap
    pages to the OS (so memory the block reuses is counted as it is touched again). Where `clear_refs` is not
    writable, a sampling thread reads `VmRSS` every 0.2 ms instead (may miss short spikes). `.peak` is `None` when
    neither works (not Linux). `.method` says which was used.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak: int | None = None
        self.method = ""
        self._stop = threading.Event()
        self._sampled = 0

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        _malloc_trim()
        self._base_kib = _status_kib("VmRSS")
        if self._base_kib is None:
            self.method = "unavailable"
            return self
        if _reset_hwm():
            self.method = "VmHWM after malloc_trim + clear_refs"
        else:
            self.method = "sampled VmRSS (0.2 ms)"
            self._sampled = self._base_kib
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _status_kib("VmRSS") or 0
            self._sampled = max(self._sampled, rss)
            time.sleep(0.0002)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        if self.method == "unavailable":
            return
        if self.method.startswith("sampled"):
            self._stop.set()
            self._thread.join()
            peak_kib = max(self._sampled, _status_kib("VmRSS") or 0)
        else:
            peak_kib = _status_kib("VmHWM") or 0
        self.peak = max(0, peak_kib - self._base_kib) * 1024


# ---------------------------------------------------------------------------------------------------------- disk


def drop_page_cache(paths: Iterable[str]) -> None:
    """Ask the kernel to drop cached pages of these (fsynced, clean) files, so the next read comes from the disk."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except (OSError, AttributeError):
            pass
        finally:
            os.close(fd)


def disk_read_bandwidth(folder: str, nbytes: int, repeats: int = 3, chunk: int = 8 << 20) -> dict[str, float]:
    """Sequential read bandwidth (bytes/s) of a file of `nbytes` random bytes in `folder`, cold and warm.

    The file is written and fsynced, then read `repeats` times in `chunk`-byte reads after dropping it from the page
    cache (`cold`, the disk) and `repeats` times without (`warm`, memory). Returns medians.
    """
    nbytes = max(int(nbytes), chunk)
    path = os.path.join(folder, "seqread.bench.bin")
    block = os.urandom(chunk)
    with open(path, "wb") as f:
        written = 0
        while written < nbytes:
            f.write(block)
            written += chunk
        f.flush()
        os.fsync(f.fileno())
    buf = bytearray(chunk)
    results: dict[str, list[float]] = {"cold": [], "warm": []}
    try:
        for kind in ("cold", "warm"):
            for _ in range(repeats):
                if kind == "cold":
                    drop_page_cache([path])
                start = time.perf_counter()
                with open(path, "rb", buffering=0) as f:
                    while f.readinto(buf):
                        pass
                results[kind].append(written / (time.perf_counter() - start))
    finally:
        os.unlink(path)
    return {"cold_bytes_per_s": statistics.median(results["cold"]),
            "warm_bytes_per_s": statistics.median(results["warm"]), "file_bytes": written}


# ---------------------------------------------------------------------------------------------------------- machine


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def system_info(device: torch.device) -> dict[str, Any]:
    """Versions and a one-line description of the device the benchmark runs on."""
    import transformers

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _mem_total_gib(),
        "device": str(device),
    }
    from ..version import __version__

    info["hf_kvpacket"] = __version__
    mem = f", {info['memory_gib']:.0f} GiB RAM" if info["memory_gib"] else ""
    cpu_line = f"{info['cpu']} ({info['logical_cpus']} logical cores, {info['torch_threads']} torch threads{mem})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = props.total_memory / 2**30
        info["cuda"] = torch.version.cuda
        info["device_line"] = (f"GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}); "
                               f"host CPU: {cpu_line}")
    else:
        info["device_line"] = f"CPU: {cpu_line}"
    return info


def _proc_stat_busy() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs since boot."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()[1:]
    except OSError:
        return None
    values = [float(x) for x in parts[:8]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


@dataclass
class LoadMonitor:
    """How busy the machine was with *other* processes while the benchmark ran.

    `other_cores` is the average number of cores used by everything except this process (from `/proc/stat` minus
    this process' own CPU time), `loadavg` the 1-minute load averages at start and end.
    """

    start_wall: float = field(default_factory=time.perf_counter)
    start_stat: tuple[float, float] | None = field(default_factory=_proc_stat_busy)
    start_self: float = field(default_factory=lambda: sum(os.times()[:2]))
    start_loadavg: float | None = field(default_factory=lambda: os.getloadavg()[0] if hasattr(os, "getloadavg") else None)

    def summary(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.start_wall
        out: dict[str, Any] = {"seconds": wall, "loadavg_start": self.start_loadavg,
                               "loadavg_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
        end = _proc_stat_busy()
        if self.start_stat and end and wall > 0:
            hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            busy_all = (end[0] - self.start_stat[0]) / hz
            own = sum(os.times()[:2]) - self.start_self
            out["other_cores"] = max(0.0, (busy_all - own) / wall)
            out["own_cores"] = own / wall
        cpus = os.cpu_count() or 1
        other = out.get("other_cores")
        out["loaded"] = bool(other is not None and other >= 0.25 * cpus) or bool(
            other is None and (out["loadavg_start"] or 0) >= 0.5 * cpus)
        return out


# ---------------------------------------------------------------------------------------------------------- stats


def summarize(samples: list[float]) -> dict[str, Any]:
    """Median, min, max, interquartile range and the samples themselves (seconds)."""
    if not samples:
        return {"n": 0}
    s = sorted(samples)
    q = statistics.quantiles(s, n=4) if len(s) >= 2 else [s[0], s[0], s[0]]
    return {"n": len(s), "median": statistics.median(s), "min": s[0], "max": s[-1], "iqr": q[2] - q[0],
            "samples": samples}
