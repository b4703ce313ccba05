"""A real HTTP server on localhost, in a thread, that serves the files of a folder and counts the
requests: downloads are tested through torchvision's own code, with its URLs pointed here (and at an
address nobody listens on for a failure). No test needs the internet."""
from __future__ import annotations

import contextlib
import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

# Port 1 on localhost: nothing listens there, so a connection is refused at once.
UNREACHABLE = "http://127.0.0.1:1/"


class _Handler(SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def serve(folder: Path):
    """Yields (base URL ending in /, the list of paths requested so far)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(folder)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server.requests
    finally:
        server.shutdown()
        server.server_close()
