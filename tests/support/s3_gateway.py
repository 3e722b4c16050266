"""An S3 gateway in front of a real MinIO that drops the Object Lock headers of every request.

What a bank's authenticating S3 proxy (or a store that ignores the headers) does to an upload:
the request is re-signed with the gateway's own credentials, so MinIO accepts it, and stores the
object with the bucket's default retention (or none) instead of the one the client asked for.
MinIO itself is real; only the headers in between are lost. With `drop_legal_holds`, it also
answers a request that sets an object's legal hold with success, without passing it on: a store
that does not keep holds.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import urllib3
from minio.credentials.credentials import Credentials
from minio.signer import sign_v4_s3

_STRIPPED = ("x-amz-object-lock-mode", "x-amz-object-lock-retain-until-date")
_SIGNED_HEADERS = re.compile(r"SignedHeaders=([^,\s]+)")
_REGION = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/")
_HOP_BY_HOP = ("connection", "transfer-encoding", "content-length", "keep-alive")


class StrippingS3Gateway:
    """Listens on 127.0.0.1 (`url`) and forwards to `endpoint` (http://host:port)."""

    def __init__(
        self, endpoint: str, access_key: str, secret_key: str, *, drop_legal_holds: bool = False
    ) -> None:
        # Read at each request: a test may let the store keep holds again.
        self.drop_legal_holds = drop_legal_holds
        gateway = self
        upstream = urlsplit(endpoint)
        credentials = Credentials(access_key, secret_key)
        pool = urllib3.PoolManager(retries=False)

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if gateway.drop_legal_holds and self.command == "PUT" and "legal-hold" in self.path:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                authorization = self.headers.get("Authorization", "")
                signed = _SIGNED_HEADERS.search(authorization)
                region = _REGION.search(authorization)
                if signed is None or region is None:
                    self.send_error(403, "unsigned request")
                    return
                headers: dict[str, str | list[str] | tuple[str]] = {
                    name: self.headers.get(name, "")
                    for name in signed[1].split(";")
                    if name not in _STRIPPED
                }
                headers["host"] = upstream.netloc
                url = urlsplit(f"{upstream.scheme}://{upstream.netloc}{self.path}")
                when = datetime.strptime(str(headers["x-amz-date"]), "%Y%m%dT%H%M%SZ")
                signed_headers = sign_v4_s3(
                    method=self.command,
                    url=url,
                    region=region[1],
                    headers=headers,
                    credentials=credentials,
                    content_sha256=str(headers["x-amz-content-sha256"]),
                    date=when.replace(tzinfo=UTC),
                )
                response = pool.request(
                    self.command,
                    url.geturl(),
                    body=body or None,
                    headers={key: str(value) for key, value in signed_headers.items()},
                    redirect=False,
                )
                self.send_response(response.status)
                for key, value in response.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                length = response.headers.get("Content-Length", str(len(response.data)))
                self.send_header(
                    "Content-Length", length if self.command == "HEAD" else str(len(response.data))
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(response.data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test's output is for the test

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> StrippingS3Gateway:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
