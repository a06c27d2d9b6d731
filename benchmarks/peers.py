"""The servers under test, each a subprocess on 127.0.0.1 in a temp dir of its own.

Each `Peer` owns a storage folder with `seed/` (the test files, hard-linked in,
for gets) and `up/` (emptied before each put), starts its server, tells
`clients.py` how to reach it (`client`), maps a storage-relative path to the
path its clients use (`remote`), and stops the server by PID.

sockftp   `python -m ftpserver` with a generated config and one user
pyftpdlib `ftpd_peer.py` (pyftpdlib's async server, sendfile on)
sftp      OpenSSH `sshd -D -e` as root with a throwaway host key and
          authorized key, `internal-sftp`, on a free non-22 port
"""

from __future__ import annotations

import contextlib
import getpass
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness import HERE, Deadline

PASSWORD = "bench-password"
USER = "bench"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
FTPSERVER = [sys.executable, "-m", "ftpserver"]
_LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")


class PeerUnavailableError(Exception):
    """The peer cannot run on this machine; the message says why."""


class Peer:
    name = "peer"
    kind = "peer"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.storage.mkdir(parents=True)
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------------

    @classmethod
    def check_available(cls) -> None:
        """Raise `PeerUnavailableError` if this peer cannot run on this machine."""

    def start(self, deadline: Deadline) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _spawn(self, command: list[str], stdin: str | None = None) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        if stdin is not None:
            self.process.stdin.write(stdin.encode())
            self.process.stdin.close()

    def _await_log_port(self, deadline: Deadline) -> None:
        """Wait for the server's `listening on HOST:PORT` line and take the port from it."""
        end = time.monotonic() + deadline.timeout(START_TIMEOUT)
        while time.monotonic() < end:
            match = _LISTENING.search(self.log_path.read_text(errors="replace"))
            if match:
                self.port = int(match.group(2))
                return
            self._check_alive()
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not report its port in {START_TIMEOUT:.0f} s")

    def _await_accepting(self, deadline: Deadline) -> None:
        end = time.monotonic() + deadline.timeout(START_TIMEOUT)
        while time.monotonic() < end:
            self._check_alive()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not accept connections in {START_TIMEOUT:.0f} s")

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-600:]
            raise RuntimeError(f"{self.name} exited {self.process.returncode} on start: {tail}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it will not go; only the process we started."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)

    # -- storage ----------------------------------------------------------------

    @property
    def client(self) -> dict:
        raise NotImplementedError

    def login_variants(self) -> list[tuple[str, dict]]:
        """(label, client) pairs for the login-heavy workloads: this peer as it logs in."""
        return [(self.name, self.client)]

    def remote(self, relative: str) -> str:
        """The path a client names for `relative` inside the storage folder."""
        return "/" + relative

    def reset_uploads(self) -> None:
        """Empty `up/` (and `up/small/`) before a put, so every put is a fresh one."""
        up = self.storage / "up"
        shutil.rmtree(up, ignore_errors=True)
        (up / "small").mkdir(parents=True)


class SockftpPeer(Peer):
    name = "sockftp"
    kind = "sockftp"

    def start(self, deadline: Deadline) -> None:
        config = self.workdir / "server.yaml"
        config.write_text(self._config_text())
        subprocess.run(
            [*FTPSERVER, "adduser", USER, "--config", str(config), "--password-stdin", "--home", "/"],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            check=True,
            timeout=deadline.timeout(30),
        )
        self._spawn([*FTPSERVER, "--config", str(config), "--port", "0"])
        self._await_log_port(deadline)

    def _config_text(self) -> str:
        # 100 concurrent loopback clients need more than the shipped
        # max_connections_per_address (20); anonymous read access is on for the
        # `sockftp anonymous` rows, which show what logins cost.
        return (
            "listen: {host: 127.0.0.1, port: 0}\n"
            f"storage: {self.storage}\n"
            "users_file: users.yaml\n"
            "anonymous: {enabled: true, home: /, permissions: r}\n"
            "limits:\n"
            "  max_connections: 200\n"
            "  max_connections_per_address: 200\n"
            "  shutdown_grace: 5\n"
            "log_level: info\n"
        )

    @property
    def client(self) -> dict:
        return {
            "kind": "sockftp",
            "host": "127.0.0.1",
            "port": self.port,
            "user": USER,
            "password": PASSWORD,
            "timeout": 120,
        }

    def login_variants(self) -> list[tuple[str, dict]]:
        """Also without a login, first (before scrypt has grown the heap): the user's
        scrypt check is most of a connection's time and memory."""
        anonymous = {**self.client, "user": None, "password": None}
        return [(f"{self.name} anonymous", anonymous), *super().login_variants()]


class PyftpdlibPeer(Peer):
    name = "pyftpdlib"
    kind = "ftp"

    @classmethod
    def check_available(cls) -> None:
        if importlib.util.find_spec("pyftpdlib") is None:
            raise PeerUnavailableError("pyftpdlib is not installed (pip install -e '.[bench]')")

    def start(self, deadline: Deadline) -> None:
        script = HERE / "ftpd_peer.py"
        command = [sys.executable, str(script), "--root", str(self.storage), "--user", USER]
        self._spawn([*command, "--password-stdin"], stdin=PASSWORD + "\n")
        self._await_log_port(deadline)

    @property
    def client(self) -> dict:
        return {
            "kind": "ftp",
            "host": "127.0.0.1",
            "port": self.port,
            "user": USER,
            "password": PASSWORD,
            "timeout": 120,
        }


class SftpPeer(Peer):
    name = "OpenSSH sftp"
    kind = "sftp"
    _install_tried = False

    @classmethod
    def check_available(cls) -> None:
        if os.geteuid() != 0:
            raise PeerUnavailableError("sshd must run as root here (it switches to the logged-in user)")
        if shutil.which("sshd") is None and not cls._install_tried:
            cls._install_tried = True
            _install_openssh_server()
        missing = [tool for tool in ("sshd", "sftp", "ssh-keygen") if shutil.which(tool) is None]
        if missing:
            raise PeerUnavailableError(f"not installed: {', '.join(missing)}")

    def start(self, deadline: Deadline) -> None:
        host_key = self.workdir / "host_key"
        for key in (host_key, self.key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(key)],
                check=True,
                capture_output=True,
                timeout=deadline.timeout(30),
            )
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(self.key.with_suffix(".pub").read_text())
        self.port = _free_port()
        config = self.workdir / "sshd_config"
        config.write_text(self._config_text(host_key, authorized))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        self._spawn([shutil.which("sshd"), "-D", "-e", "-f", str(config)])
        self._await_accepting(deadline)

    @property
    def key(self) -> Path:
        return self.workdir / "client_key"

    def _config_text(self, host_key: Path, authorized: Path) -> str:
        return (
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {host_key}\n"
            f"AuthorizedKeysFile {authorized}\n"
            "PidFile none\n"
            "StrictModes no\n"  # the temp dir sits under world-writable /tmp
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "UseDNS no\n"
            "MaxStartups 300\n"  # the default 10:30:100 drops concurrent handshakes
            "LogLevel ERROR\n"
            "Subsystem sftp internal-sftp\n"
        )

    @property
    def client(self) -> dict:
        return {
            "kind": "sftp",
            "host": "127.0.0.1",
            "port": self.port,
            "user": getpass.getuser(),
            "key": str(self.key),
            "sftp": shutil.which("sftp"),
            "timeout": 300,
        }

    def remote(self, relative: str) -> str:
        return str(self.storage / relative)


def _install_openssh_server() -> None:
    """One attempt at `apt-get install openssh-server` (after `apt-get update`); errors are ignored."""
    print("sshd is missing; trying `apt-get install -y openssh-server` once", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=300, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "openssh-server"], capture_output=True, timeout=300, env=env
        )


def _free_port() -> int:
    """A port free on 127.0.0.1 right now (the kernel's pick, never 22)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


PEERS: list[type[Peer]] = [SockftpPeer, PyftpdlibPeer, SftpPeer]
