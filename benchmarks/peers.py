"""The servers under test, each a subprocess on 127.0.0.1 in a temp dir of its own.

Each `Peer` owns a storage folder with `seed/` (the test files, hard-linked in,
for gets) and `up/` (emptied before each put), starts its server, tells
`clients.py` how to reach it (`client`), maps a storage-relative path to the
path its clients use (`remote`), and stops the server by PID.

sockftp   `python -m ftpserver` with a generated config and one user
pyftpdlib `ftpd_peer.py` (pyftpdlib's async server, sendfile on)
sftp      OpenSSH `sshd -D -e` as root with a throwaway host key and
          authorized key, `internal-sftp`, on a free non-22 port
rsync     `rsync --daemon --no-detach` with one writable module over the storage
vsftpd    `vsftpd CONFFILE` in the foreground, anonymous sessions that may upload

The last three come from Debian packages, installed once per run if missing
(`install_packages`). Each peer also gives the command line a user would type to
move a whole tree with its own client (`tree_command`), for the CLI tree rows.
"""

from __future__ import annotations

import contextlib
import getpass
import grp
import importlib.util
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import HERE, Deadline, set_aside

PASSWORD = "bench-password"
USER = "bench"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
FTPSERVER = [sys.executable, "-m", "ftpserver"]
JOBS = 4  # connections (or parallel transfers) the tree commands ask for
BIG, BATCH, MANY, TREE = "big", "batch", "many", "tree"  # workload groups: see Peer.workloads
ALL_WORKLOADS = frozenset({BIG, BATCH, MANY, TREE})
FTPCLIENT = (
    [str(Path(sys.executable).with_name("ftpclient"))]  # the script a user runs, in this venv
    if Path(sys.executable).with_name("ftpclient").exists()
    else [sys.executable, "-m", "ftpclient"]
)
_LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")


class PeerUnavailableError(Exception):
    """The peer cannot run on this machine; the message says why."""


@dataclass(frozen=True)
class Command:
    """One command line for `clients.py`'s `command` op: its argv, extra environment
    variables (a password, never in argv when the tool takes it otherwise) and stdin."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    stdin: str | None = None


class Peer:
    name = "peer"
    kind = "peer"
    cli_name = ""  # the command-line client in the tree rows' labels, if it has one
    workloads = ALL_WORKLOADS  # the workload groups this peer runs

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

    def _login_client(self, kind: str, user: str, password: str) -> dict:
        """`client` for a server on our port that takes a user name and password."""
        return {
            "kind": kind,
            "host": "127.0.0.1",
            "port": self.port,
            "user": user,
            "password": password,
            "timeout": 120,
        }

    def login_variants(self) -> list[tuple[str, dict]]:
        """(label, client) pairs for the login-heavy workloads: this peer as it logs in."""
        return [(self.name, self.client)]

    def remote(self, relative: str) -> str:
        """The path a client names for `relative` inside the storage folder."""
        return "/" + relative

    def tree_command(self, direction: str, local: Path, relative: str) -> Command | None:
        """The command line a user would type to move a whole tree with this peer's own
        client: "put" uploads the folder `local` so that it lands at `relative` inside the
        storage folder, "get" downloads `relative` as the new folder `local`. None: the
        peer has no command-line client of its own here."""
        return None

    def reset_uploads(self) -> None:
        """A new, empty `up/` (and `up/small/`) before a put, so every put is a fresh one;
        the old one is set aside, not deleted (see `harness.set_aside`)."""
        up = self.storage / "up"
        set_aside(up)
        (up / "small").mkdir(parents=True)


class PackagedPeer(Peer):
    """A peer whose programs come from Debian packages: missing ones are installed
    (`install_packages`, once per run) before the peer is given up."""

    programs: dict[str, str] = {}  # program -> the Debian package that has it
    root_reason = ""  # why this peer needs root, if it does

    @classmethod
    def check_available(cls) -> None:
        if cls.root_reason and os.geteuid() != 0:
            raise PeerUnavailableError(cls.root_reason)
        missing = [program for program in cls.programs if shutil.which(program) is None]
        if missing and os.geteuid() == 0:
            install_packages(sorted({cls.programs[program] for program in missing}))
            missing = [program for program in cls.programs if shutil.which(program) is None]
        if missing:
            raise PeerUnavailableError(f"not installed: {', '.join(missing)}")


class SockftpPeer(Peer):
    name = "sockftp"
    kind = "sockftp"
    cli_name = "ftpclient"

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
        return self._login_client("sockftp", USER, PASSWORD)

    def tree_command(self, direction: str, local: Path, relative: str) -> Command | None:
        parent = _tree_parent(local, relative)
        connection = ["--host", "127.0.0.1", "--port", str(self.port), "--user", USER, "--quiet"]
        if direction == "put":
            args = ["put", "-r", "-j", str(JOBS), str(local), "-d", f"/{parent}"]
        else:
            args = ["get", "-r", "-j", str(JOBS), f"/{relative}", "-o", f"{local.parent}/"]
        return Command([*FTPCLIENT, *connection, *args], env={"SOCKFTP_PASSWORD": PASSWORD})

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
        return self._login_client("ftp", USER, PASSWORD)


class SftpPeer(PackagedPeer):
    name = "OpenSSH sftp"
    kind = "sftp"
    cli_name = "sftp -b"

    root_reason = "sshd must run as root here (it switches to the logged-in user)"
    programs = {"sshd": "openssh-server", "sftp": "openssh-client", "ssh-keygen": "openssh-client"}

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
        argv = [
            shutil.which("sftp") or "sftp",
            "-b",
            "-",
            "-q",
            "-P",
            str(self.port),
            "-i",
            str(self.key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            f"{getpass.getuser()}@127.0.0.1",
        ]
        return {"kind": "sftp", "argv": argv, "timeout": 300}

    def remote(self, relative: str) -> str:
        return str(self.storage / relative)

    def tree_command(self, direction: str, local: Path, relative: str) -> Command | None:
        # Into the parent: `put -R tree up/tree` onto an existing up/tree makes up/tree/tree.
        parent = self.remote(_tree_parent(local, relative))
        remote = self.remote(relative)
        line = f'put -R "{local}" "{parent}"' if direction == "put" else f'get -R "{remote}" "{local}"'
        return Command(self.client["argv"], stdin=line + "\n")


class RsyncPeer(PackagedPeer):
    """`rsync --daemon` in the foreground with one writable module over the storage folder."""

    name = "rsync"
    kind = "rsync"
    cli_name = "rsync -rt"
    workloads = frozenset({BATCH, TREE})
    programs = {"rsync": "rsync"}
    module = "bench"

    def start(self, deadline: Deadline) -> None:
        self.port = _free_port()
        config = self.workdir / "rsyncd.conf"
        config.write_text(self._config_text())
        command = [shutil.which("rsync") or "rsync", "--daemon", "--no-detach"]
        self._spawn([*command, "--address=127.0.0.1", f"--port={self.port}", f"--config={config}"])
        self._await_accepting(deadline)

    def _config_text(self) -> str:
        # As root the daemon would switch to `nobody`; it stays who we are, which owns the storage.
        return (
            f"log file = {self.workdir / 'rsyncd.log'}\n"
            "use chroot = false\n"
            "max connections = 0\n"
            f"[{self.module}]\n"
            f"    path = {self.storage}\n"
            "    read only = false\n"
            "    use chroot = false\n"
            f"    uid = {getpass.getuser()}\n"
            f"    gid = {grp.getgrgid(os.getgid()).gr_name}\n"
        )

    @property
    def url(self) -> str:
        return f"rsync://127.0.0.1:{self.port}/{self.module}"

    @property
    def client(self) -> dict:
        return {"kind": "rsync", "rsync": shutil.which("rsync") or "rsync", "timeout": 300}

    def remote(self, relative: str) -> str:
        return f"{self.url}/{relative}"

    def tree_command(self, direction: str, local: Path, relative: str) -> Command | None:
        # -t keeps modification times: without it, rsync's quick check (size and time) finds
        # every file changed on the re-run and goes through each one again.
        parent = _tree_parent(local, relative)
        rsync = [self.client["rsync"], "-rt"]
        if direction == "put":
            return Command([*rsync, str(local), f"{self.url}/{parent}/"])
        return Command([*rsync, self.remote(relative), f"{local.parent}/"])


class VsftpdPeer(PackagedPeer):
    """vsftpd in the foreground, anonymous logins with uploads into `up/`; `lftp` for the
    tree rows, the stdlib `ftplib` for the small-file batches."""

    name = "vsftpd"
    kind = "vsftpd"
    cli_name = "lftp mirror"
    workloads = frozenset({BATCH, TREE})
    root_reason = "vsftpd must run as root here (it chroots anonymous sessions and switches to `ftp`)"
    programs = {"vsftpd": "vsftpd", "lftp": "lftp"}
    account = "ftp"  # the system user vsftpd serves anonymous sessions as (the package adds it)
    passive_ports = (20000, 29999)  # below the kernel's ephemeral range (32768-60999 here)

    @classmethod
    def check_available(cls) -> None:
        super().check_available()
        try:
            pwd.getpwnam(cls.account)
        except KeyError:
            raise PeerUnavailableError(f"no system user {cls.account!r} for anonymous sessions") from None

    def start(self, deadline: Deadline) -> None:
        self.port = _free_port()
        empty = self.workdir / "empty"  # vsftpd's secure_chroot_dir: empty, not writable by `ftp`
        empty.mkdir(mode=0o755)
        config = self.workdir / "vsftpd.conf"
        config.write_text(self._config_text(empty))
        config.chmod(0o600)
        self.reset_uploads()
        self._spawn([shutil.which("vsftpd") or "vsftpd", str(config)])
        self._await_accepting(deadline)

    def _config_text(self, empty: Path) -> str:
        low, high = self.passive_ports
        return (
            "listen=YES\nlisten_ipv6=NO\nbackground=NO\n"
            f"listen_address=127.0.0.1\nlisten_port={self.port}\n"
            "anonymous_enable=YES\nno_anon_password=YES\nlocal_enable=NO\n"
            f"anon_root={self.storage}\n"  # chrooted there: it must not be writable by `ftp`
            "write_enable=YES\nanon_upload_enable=YES\nanon_mkdir_write_enable=YES\n"
            "anon_other_write_enable=YES\nanon_umask=022\n"
            f"pasv_enable=YES\npasv_min_port={low}\npasv_max_port={high}\n"
            "connect_from_port_20=NO\nmax_clients=0\nmax_per_ip=0\n"
            "xferlog_enable=NO\ndirmessage_enable=NO\nssl_enable=NO\n"
            f"secure_chroot_dir={empty}\n"
            # a container refuses the namespaces and may refuse the seccomp filter
            "seccomp_sandbox=NO\nisolate=NO\nisolate_network=NO\n"
        )

    @property
    def client(self) -> dict:
        return self._login_client("ftp", "anonymous", "bench@")

    def reset_uploads(self) -> None:
        """Empty `up/`, writable by `ftp`: anonymous uploads are stored as that user."""
        super().reset_uploads()
        account = pwd.getpwnam(self.account)
        for folder in (self.storage / "up", self.storage / "up" / "small"):
            os.chown(folder, account.pw_uid, account.pw_gid)

    def tree_command(self, direction: str, local: Path, relative: str) -> Command | None:
        # No TLS (the server has none) and a bounded number of retries instead of lftp's 1000.
        settings = "set ftp:ssl-allow no; set net:max-retries 2; set net:timeout 30"
        if direction == "put":
            mirror = f'mirror -R --parallel={JOBS} "{local}" "{relative}"'
        else:
            mirror = f'mirror --parallel={JOBS} "{relative}" "{local}"'
        lftp = [shutil.which("lftp") or "lftp", "-u", "anonymous,bench@", "-p", str(self.port)]
        return Command([*lftp, "-e", f"{settings}; {mirror}; quit", "127.0.0.1"])


def install_packages(packages: list[str]) -> None:
    """One attempt per run at `apt-get install -y PACKAGES` (after one `apt-get update`);
    errors are ignored: the caller looks for the programs again afterwards."""
    wanted = [package for package in packages if package not in _install_tried]
    if not wanted:
        return
    _install_tried.update(wanted)
    print(f"trying `apt-get install -y {' '.join(wanted)}` once", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if "apt-get update" not in _install_tried:
            _install_tried.add("apt-get update")
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=300, env=env)
        subprocess.run(["apt-get", "install", "-y", *wanted], capture_output=True, timeout=300, env=env)


_install_tried: set[str] = set()  # packages (and "apt-get update") tried in this run


def _tree_parent(local: Path, relative: str) -> str:
    """The folder (storage-relative) that a tree lands in or comes from: the commands name
    it and keep the tree's own name, so `local` must bear the same name as `relative`."""
    parent, _, leaf = relative.rpartition("/")
    if leaf != local.name:
        raise ValueError(f"{local} and {relative} name different trees")
    return parent


def _free_port() -> int:
    """A port free on 127.0.0.1 right now (the kernel's pick, never 22)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


PEERS: list[type[Peer]] = [SockftpPeer, PyftpdlibPeer, SftpPeer, RsyncPeer, VsftpdPeer]
