"""The pyftpdlib peer: an FTP server on 127.0.0.1 with sendfile on, for the benchmark.

    python benchmarks/ftpd_peer.py --root DIR --user NAME --password-stdin

Listens on an ephemeral port and logs `listening on 127.0.0.1:PORT` to stderr,
like sockftp's server, so the harness starts both the same way. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def build_server(root: str, user: str, password: str) -> FTPServer:
    authorizer = DummyAuthorizer()
    authorizer.add_user(user, password, root, perm="elradfmwMT")
    handler = type("BenchHandler", (FTPHandler,), {})
    handler.authorizer = authorizer
    handler.use_sendfile = True
    handler.permit_foreign_addresses = False
    server = FTPServer(("127.0.0.1", 0), handler)
    server.max_cons = 512
    server.max_cons_per_ip = 0
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-stdin", action="store_true", required=True)
    args = parser.parse_args()
    password = sys.stdin.readline().rstrip("\n")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    server = build_server(args.root, args.user, password)
    host, port = server.address
    logging.info("listening on %s:%s", host, port)
    server.serve_forever(handle_exit=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
