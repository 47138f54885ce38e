"""A stand-in for the CUDA driver, for contract tests on a machine without a GPU.

Only the calls into the driver (torch._C._cuda_* and the CPU build's stand-ins for them, cudart, the lazy
init) are replaced; torch's own Python (torch.cuda.*, its device-index rules) and ours run as shipped. What
a contract test shows is that our code meets torch's CUDA contracts, not how fast or how big anything is.
"""

import sys
from types import SimpleNamespace

import pytest
import torch
import torch._dynamo  # imported before the stubs: with them it would take the CUDA build's imports

GIB = 2**30


class FakeCudaDriver:
    """`devices` GPUs of `total` bytes; `outside` bytes held outside torch's pool (context, library handles)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, devices: int = 2, total: int = 80 * GIB,
                 outside: int = GIB // 2, reserved: int = 0):
        self.devices, self.total, self.outside, self.reserved = devices, total, outside, reserved
        self.current = 0
        self.fractions: dict[int, float] = {}
        patch = {
            "_cuda_getDeviceCount": lambda: devices,
            "_cuda_getDevice": lambda: self.current,
            "_cuda_setMemoryFraction": self._set_fraction,
            "_cuda_memoryStats": lambda index: {"reserved_bytes.all.current": self.reserved},
        }
        for name, fn in patch.items():
            monkeypatch.setattr(torch._C, name, fn, raising=False)
        for module in [m for name, m in sys.modules.items() if name.startswith("torch.cuda") and m is not None]:
            if hasattr(module, "_lazy_init"):  # the driver's initialisation, bound by name in several modules
                monkeypatch.setattr(module, "_lazy_init", lambda: None)
        monkeypatch.setattr(torch.cuda, "_cached_device_count", None, raising=False)
        monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: devices, raising=False)
        monkeypatch.setattr(torch.cuda, "_exchange_device", self._exchange)
        monkeypatch.setattr(torch.cuda, "_maybe_exchange_device", self._exchange)
        monkeypatch.setattr(torch.cuda, "_get_device_properties", lambda index: SimpleNamespace(
            total_memory=total, name="fake GPU", major=9, minor=0), raising=False)
        monkeypatch.setattr(torch.cuda, "cudart", lambda: SimpleNamespace(cudaMemGetInfo=self._mem_get_info))

    def _set_fraction(self, fraction: float, index: int) -> None:
        assert isinstance(index, int) and 0 <= index < self.devices, f"no device {index}"
        self.fractions[index] = fraction

    def _exchange(self, index: int) -> int:
        before, self.current = self.current, (index if index >= 0 else self.current)
        return before

    def _mem_get_info(self, index: int) -> tuple[int, int]:
        assert isinstance(index, int) and 0 <= index < self.devices, f"no device {index}"
        return self.total - self.outside - self.reserved, self.total
