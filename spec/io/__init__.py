"""Files spec reads and writes: safetensors + JSON checkpoints with checksums, atomic writes of files and
whole directories, and the rules on which paths are trusted. Nothing is ever unpickled."""

from spec.io.atomic import (
    atomic_write_bytes,
    check_writable_directory,
    check_writable_file,
    readable_directory,
    replace_directory,
)
from spec.io.checkpoint import (
    CHECKSUM_FIELD,
    CONFIG_NAME,
    WEIGHTS_NAME,
    check_config_fields,
    load_checkpoint,
    manifest_bytes,
    save_checkpoint,
    verify_manifest,
)
from spec.io.files import (
    check_model_directory,
    child_path,
    parse_json,
    plain_name,
    read_json,
    read_text,
    sha256_hex,
)

__all__ = [
    "CHECKSUM_FIELD",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "atomic_write_bytes",
    "check_config_fields",
    "check_model_directory",
    "check_writable_directory",
    "check_writable_file",
    "child_path",
    "load_checkpoint",
    "manifest_bytes",
    "parse_json",
    "plain_name",
    "read_json",
    "read_text",
    "readable_directory",
    "replace_directory",
    "save_checkpoint",
    "sha256_hex",
    "verify_manifest",
]
