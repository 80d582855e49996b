"""The legacy side of a TLS conversation, with nothing but Python's ``ssl``: a server holding an enterprise
certificate (what a mesh proxy must verify by DNS name), and a client that trusts a PEM file and checks
the server's DNS name (what an old client does with the mesh bundle).

The server runs in a thread on 127.0.0.1 (a port the kernel picks) and answers every GET with 200 and a
fixed body, speaking HTTP/1.0 so each request is a new connection, hence a new handshake: what a test
sees always reflects the trust in force now, never a pooled connection's.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

TIMEOUT = 5.0


@contextlib.contextmanager
def legacy_https_server(chain: Path, key: Path, body: bytes) -> Iterator[int]:
    """Serve HTTPS with ``chain`` (leaf first) and ``key``; yield the port; stop on exit."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(chain), str(key))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self) -> tuple[socket.socket, object]:
            raw, address = self.socket.accept()
            raw.settimeout(TIMEOUT)  # a peer that never finishes its handshake cannot hold a thread forever
            return context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False), address

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # refused handshakes are what some tests are about

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


def legacy_get(port: int, cafile: Path, server_name: str) -> tuple[int, bytes]:
    """GET / over TLS from 127.0.0.1:``port``, trusting only ``cafile`` and checking ``server_name``
    against the server's certificate as any old client does; (status, body). Raises ssl.SSLError when
    the server cannot be verified."""
    context = ssl.create_default_context(cafile=str(cafile))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
