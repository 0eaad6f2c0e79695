"""Where leantrain keeps what it computes once: one root for every cache.

``$LEANTRAIN_CACHE_DIR`` (else ~/.cache/leantrain) holds the tokenized data
(``tokenized/``), the planner's CPU calibration (``calibration/``) and bundled models
converted to safetensors (``bundled/``), so one variable moves or isolates them all
(the test suite points it at a throwaway folder).
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "LEANTRAIN_CACHE_DIR"


def cache_home(kind: str) -> Path:
    """The folder for one kind of cache under the leantrain cache root."""
    root = os.environ.get(ENV_VAR)
    return (Path(root).expanduser() if root else Path("~/.cache/leantrain").expanduser()) / kind
