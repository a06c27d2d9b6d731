"""Storage: the ONLY code that touches stored data.

`base.Storage` is the interface a session uses; each backend lives in a
module of its own and is chosen by the config's `storage.backend`: `local`
(a directory tree on this machine) or `s3` (key prefixes in a bucket of an
S3-compatible object store, which several servers may share).
"""

from __future__ import annotations

from ..config import ServerConfig
from .base import Snapshot, Storage, Upload
from .local import LocalStorage

__all__ = ["BACKENDS", "LocalStorage", "Snapshot", "Storage", "Upload", "open_storage"]

BACKENDS = ("local", "s3")


def open_storage(config: ServerConfig) -> Storage:
    """The backend the config names, ready to serve."""
    quotas = [
        a.home for a in [*config.users.values(), config.anonymous] if a is not None and a.quota is not None
    ]
    if config.storage_backend == "local":
        return LocalStorage(config.storage_root, config.limits.max_file_size, count_usage_of=quotas)
    if config.storage_backend == "s3" and config.s3 is not None:
        from .s3 import open_s3_storage  # boto3 is loaded only where it is used

        return open_s3_storage(config.s3, config.storage_root, config.limits.max_file_size, quotas)
    raise ValueError(f"unknown storage backend {config.storage_backend!r}")  # config.py checks the name
