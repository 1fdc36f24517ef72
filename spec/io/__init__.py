"""Checkpoint files: safetensors weights plus a JSON config, written atomically, never unpickled."""

from spec.io.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_write_bytes,
    check_config_fields,
    load_checkpoint,
    save_checkpoint,
)

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "atomic_write_bytes",
    "check_config_fields",
    "load_checkpoint",
    "save_checkpoint",
]
