"""The machine record every report carries: CPU, cores, SIMD path, versions, threads, data."""

from __future__ import annotations

import datetime
import platform
from typing import Any

import torch

import pyfastopt
from pyfastopt._config import config


def physical_cores() -> int | None:
    """Physical cores from /proc/cpuinfo (None where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    cores: set[tuple[str, str]] = set()
    phys = core = ""
    for line in text.splitlines() + [""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "physical id":
            phys = value
        elif key == "core id":
            core = value
        elif not key and core:
            cores.add((phys, core))
            phys = core = ""
    return len(cores) or None


def machine_record(data: str, data_real: bool | None) -> dict[str, Any]:
    """What ran the benchmark; ``data`` says which MNIST data the training workloads used."""
    cfg = config()
    return {
        "cpu": cfg["cpu"],
        "physical_cores": physical_cores(),
        "logical_cpus": cfg["logical_cpus"],
        "simd_path": cfg["simd_path"],
        "torch": torch.__version__,
        "pyfastopt": pyfastopt.__version__,
        "python": cfg["python"],
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "pyfastopt_threads": pyfastopt.get_num_threads(),
        "data": data,
        "data_real": data_real,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pyfastopt_config": cfg,
    }


def header_lines(machine: dict[str, Any]) -> list[str]:
    """The machine record as a few human-readable lines."""
    cores = machine["physical_cores"] or "?"
    return [
        f"CPU: {machine['cpu']} ({cores} cores, {machine['logical_cpus']} logical CPUs)",
        f"SIMD path: {machine['simd_path']}; threads: torch {machine['torch_threads']}, "
        f"pyfastopt {machine['pyfastopt_threads']}",
        f"torch {machine['torch']}, pyfastopt {machine['pyfastopt']}, "
        f"Python {machine['python']}, {machine['platform']}",
        f"data: {machine['data']}",
        f"date: {machine['date']}",
    ]
