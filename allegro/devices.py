"""Device names a user types ("cuda:1", "cpu"), checked against the devices this machine has.

torch.device("garbage") raises "Expected one of cpu, cuda, ipu, xpu, …" (every backend torch
knows, none of which says what exists here), and torch.device("cuda:7") is accepted on a machine
with two GPUs until something is put there. `parse_device` refuses both, naming the devices there are.
"""
import torch

from .quoting import quote


def available_devices() -> list[str]:
    """The devices of this machine as torch names them: cpu, then each CUDA GPU (and Apple's mps)."""
    names = ["cpu"] + [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def parse_device(text, what: str = "device") -> torch.device:
    """The torch.device `text` names, if this machine has it ("cuda" means cuda:0); else ValueError saying
    what `what` got and which devices exist."""
    devices = available_devices()
    try:
        if not isinstance(text, str):
            raise ValueError
        device = torch.device(text.strip())
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{what} {quote(text)} is not a device name. Devices of this machine: {', '.join(devices)} "
                         "(written like cuda:1).") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if str(device) not in devices:
        raise ValueError(f"{what} {quote(text)} is not on this machine. Devices of this machine: "
                         f"{', '.join(devices)}.")
    return device
