"""sockftp server: a threading TCP server for protocol v1 (see docs/protocol.md)."""

from .config import ConfigError, ServerConfig, load_config
from .server import FileServer

__all__ = ["ConfigError", "FileServer", "ServerConfig", "load_config"]
