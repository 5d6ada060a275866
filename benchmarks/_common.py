"""What the benchmark scripts share: the machine/environment record and the result file writer.

Imported as ``_common`` (the scripts run as ``python benchmarks/<name>.py``, so their folder is on
``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

import scoresde as sd
from scoresde._io import atomic_path


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(**extra: Any) -> dict[str, Any]:
    """Versions, threads, CPU, available cores, ``MALLOC_*`` and thread variables; ``extra`` goes after the
    library versions (e.g. ``torchsde=...``)."""
    try:
        n_cpu = len(os.sched_getaffinity(0))
    except AttributeError:
        n_cpu = os.cpu_count()
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **extra,
        "scoresde": sd.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu": cpu_model(),
        "cpus_available": n_cpu,
        "malloc_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")} or "unset",
    }
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def write_result(path: str | None, res: dict[str, Any], table: str) -> None:
    """If ``path`` is given, write ``res`` as JSON (``.json``) or the markdown ``table`` to it, atomically."""
    if not path:
        return
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "w") as f:
            if path.endswith(".json"):
                json.dump(res, f, indent=2)
                f.write("\n")
            else:
                f.write(table + "\n")
    print(f"\nwritten to {path}")
