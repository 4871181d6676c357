"""A stand-in for Azure Blob Storage and Planetary Computer's SAS token service, on 127.0.0.1.

Run as a script (``python blob_server.py ROOT``): it prints its port on the first line of stdout and serves

- ``GET /sas/<account>/<container>``: a new SAS token, as Planetary Computer's token endpoint answers;
- any other path: the file under ``ROOT`` at that path (HEAD and byte ranges, as GDAL's ``/vsicurl`` reads
  COGs), but only with a token it issued and has not expired; otherwise 403, as blob storage answers;
- ``POST /_control/expire``: every token issued so far expires;
- ``GET /_control/log``: the requests so far as JSON ``[[method, host, path, sig, status], ...]``.

GDAL reaches it as an HTTP proxy (``GDAL_HTTP_PROXY``), so rasters keep their real blob-storage URLs
(``http://naipeuwest.blob.core.windows.net/...``) and geoclf's signing sees the hosts it would in production.
It runs in a process of its own: rasterio holds the GIL while GDAL reads, which would starve a server thread.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit


class BlobStorage(BaseHTTPRequestHandler):
    root = Path(".")
    valid: ClassVar[set[str]] = set()
    log: ClassVar[list[list]] = []
    counter = itertools.count(1)
    lock = threading.Lock()

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
               head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_POST(self) -> None:
        if urlsplit(self.path).path == "/_control/expire":
            with self.lock:
                self.valid.clear()
            self._reply(204)
        else:
            self._reply(404)

    def do_HEAD(self) -> None:
        self._blob(head=True)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/_control/log":
            with self.lock:
                self._reply(200, json.dumps(self.log).encode(), {"Content-Type": "application/json"})
        elif path.startswith("/sas/"):
            with self.lock:
                sig = f"token{next(self.counter)}"
                self.valid.add(sig)
            token = f"st=2026-01-01T00%3A00%3A00Z&se=2099-01-01T00%3A00%3A00Z&sp=rl&sv=2024-05-04&sr=c&sig={sig}"
            self._reply(200, json.dumps({"msft:expiry": "2099-01-01T00:00:00Z", "token": token}).encode(),
                        {"Content-Type": "application/json"})
        else:
            self._blob()

    def _blob(self, head: bool = False) -> None:
        parts = urlsplit(self.path)
        sig = parse_qs(parts.query).get("sig", [None])[0]
        file = (self.root / parts.path.lstrip("/")).resolve()
        with self.lock:
            allowed = sig in self.valid
        status = 403 if not allowed else 404 if not (file.is_file() and self.root in file.parents) else 200
        if status != 200:
            self._record(sig, status)
            self._reply(status, b"<Error><Code>AuthenticationFailed</Code></Error>" if status == 403 else b"",
                        head=head)
            return
        data = file.read_bytes()
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        headers = {"Accept-Ranges": "bytes"}
        if wanted:
            start = int(wanted.group(1))
            end = min(int(wanted.group(2) or len(data) - 1), len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            status, data = 206, data[start:end + 1]
        self._record(sig, status)
        self._reply(status, data, headers, head=head)

    def _record(self, sig: str | None, status: int) -> None:
        parts = urlsplit(self.path)
        with self.lock:
            self.log.append([self.command, parts.netloc, parts.path, sig, status])

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    BlobStorage.root = Path(sys.argv[1]).resolve()
    server = ThreadingHTTPServer(("127.0.0.1", 0), BlobStorage)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
