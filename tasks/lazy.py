"""Thread-safe loading of diffusers and transformers: one lock for every model build, load and lazy import.

transformers and diffusers create modules on the "meta" device inside a context that patches torch
globally, so two loads in two threads can leave one model with weights that were never materialised;
and they resolve their names lazily, not thread-safely: resolving one while another thread imports
can raise ImportError. Everything that builds, loads or imports from them takes MODEL_LOCK.
"""

from __future__ import annotations

import importlib
import os
import threading

# Set before diffusers/transformers import: their loggers read these once. The deprecation line that
# the seed sound and video pipelines log on every load is known (see their engines).
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

MODEL_LOCK = threading.RLock()


def lazy_import(module: str, name: str):
    """`from module import name` under MODEL_LOCK."""
    with MODEL_LOCK:
        return getattr(importlib.import_module(module), name)
