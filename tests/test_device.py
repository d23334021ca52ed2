"""Device names: ``device_name`` gives resolve_device's answer as text, without loading PyTorch where the machine
cannot have CUDA (the fast predict path's start-up), and the same errors for names that are wrong."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hiertree.device import DeviceError, device_name, device_type, resolve_device

REPO = Path(__file__).resolve().parents[1]


def test_device_name_agrees_with_resolve_device():
    assert device_name("cpu") == "cpu"
    assert device_name("auto") == str(resolve_device("auto"))
    assert device_type("cuda:1") == "cuda" and device_type(torch.device("cpu")) == "cpu" and device_type("cpu") == "cpu"


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", ""])
def test_a_malformed_name_names_the_flag(spec):
    with pytest.raises(DeviceError, match="--device"):
        device_name(spec, flag="--device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_refused_with_the_fix():
    with pytest.raises(DeviceError, match="--device auto or cpu"):
        device_name("cuda", flag="--device")


def test_auto_on_a_machine_without_an_nvidia_driver_loads_no_pytorch():
    """A fresh interpreter asks for ``auto``: where Linux has no NVIDIA driver the answer is ``cpu`` and PyTorch
    stays unloaded; where a driver is present PyTorch is asked (and loaded) and gives the same answer."""
    code = "import sys, json\nfrom hiertree.device import device_name\nprint(json.dumps([device_name('auto'), 'torch' in sys.modules]))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    name, loaded = json.loads(run.stdout.strip().splitlines()[-1])
    assert name == str(resolve_device("auto"))
    no_driver = sys.platform.startswith("linux") and not os.path.exists("/proc/driver/nvidia/version")
    assert loaded is (not no_driver), run.stderr[-1000:]
