"""A local page to try the retriever in a browser, served from the model folder with the standard library.

    python widget.py [--host 127.0.0.1] [--port 8000] [--adapter NAME=FOLDER ...]   # then open http://127.0.0.1:8000/

Type a query and candidate passages (one per line): the page shows each passage's score and the query's attention
over the prompt pool as a bar chart. The page can be filled from its address: /?query=...&passage=...&passage=...
(and &adapter=NAME). Hyper-prompt adapters: those under adapters/ beside this file and each --adapter NAME=FOLDER
(repeatable) are loaded beside the model's own, by handler.py's EndpointHandler; with two or more, the page offers a
choice of them, applied to the query only.
GET / serves widget.html; GET /api/adapters answers {"adapters": [name, ...], "active": name or null} (the one used
when a request names none); POST /api/score takes {"query": str, "passages": [str, ...], "adapter": str (optional)}
and answers {"scores": [...], "attention": [...] or null}, or {"error": message} with a 4xx status (bad JSON or
text, or an adapter not loaded 400, no length 411, a body over 1 MiB or a request over handler.py's work bound 413,
too slow 408). Connections are served in threads (64 may wait to be accepted); a request must arrive whole within
10 s of its connection, however slowly it trickles in; the model answers one request at a time. A request whose client
has gone (closed or reset its connection) by its turn for the model is dropped unanswered, without being computed, so
a request waits for the one being computed and those whose clients still wait, never for abandoned ones. (A client
that only shuts down its sending side looks the same to the server, and is dropped too.) Scoring and the work bound
are handler.py's.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from handler import EndpointHandler

HERE = Path(__file__).resolve().parent
MAX_BODY = 1 << 20
TIMEOUT_S = 10  # seconds a connection may take to send its request, idle or trickling
BACKLOG = 64  # connections the listening socket holds while the threads are busy accepting


def make_request_handler(endpoint: EndpointHandler) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one loaded model (the model answers one request at a time)."""
    page = (HERE / "widget.html").read_bytes()
    model_lock = threading.Lock()

    class WidgetRequestHandler(BaseHTTPRequestHandler):
        timeout = TIMEOUT_S  # an idle or half-sent connection is dropped, and blocks no one meanwhile

        def setup(self) -> None:
            super().setup()
            # the per-read timeout restarts with every byte: this deadline holds for the whole request
            self._expired = False
            self._deadline = threading.Timer(TIMEOUT_S, self._stop_reading)
            self._deadline.start()

        def _stop_reading(self) -> None:
            """Ends the request's reading (a blocked read returns what came); the answer can still be written."""
            self._expired = True
            try:
                self.connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass

        def finish(self) -> None:
            self._deadline.cancel()
            super().finish()

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_json(self, status: int, value: object) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._deadline.cancel()
            if self.path.split("?")[0] in ("/", "/index.html"):
                self._send(200, page, "text/html; charset=utf-8")
            elif self.path.split("?")[0] == "/api/adapters":
                self._send_json(200, endpoint.adapters())
            else:
                self._send_json(404, {"error": f"no page at {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/api/score":
                self._send_json(404, {"error": f"no endpoint at {self.path}"})
                return
            try:
                request = self._read_json()
            except RequestError as e:
                self._send_json(e.status, {"error": str(e)})
                return
            finally:
                self._deadline.cancel()  # the request is in: answering it is bounded by handler.py's work bound
            query, passages, adapter = request.get("query"), request.get("passages"), request.get("adapter")
            payload = {"inputs": {"source_sentence": query, "sentences": passages}}
            if "adapter" in request:
                payload["parameters"] = {"adapter": adapter}  # checked by the handler: a loaded adapter's name
            with model_lock:
                if self._client_gone():
                    self.close_connection = True
                    self.log_message('"%s" dropped: the client left before its turn', self.requestline)
                    return
                scores = endpoint(payload)
                attention = endpoint.prompt_attention(query, adapter) if not isinstance(scores, dict) else None
            if isinstance(scores, dict):
                self._send_json(scores.pop("status", 400), scores)
                return
            self._send_json(200, {"scores": scores, "attention": attention})

        def _client_gone(self) -> bool:
            """Whether the client has closed its end of the connection: its socket reads as ended (or reset) now,
            without waiting. Bytes waiting to be read (a next request) mean the client is still there."""
            if self._expired:  # the deadline shut the reading side: the socket reads as ended whoever is there
                return False
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
            except (OSError, ValueError):  # reset by the client, or the socket already closed
                return True

        def _read_json(self) -> dict:
            """The body as a JSON object, or RequestError with the status to answer."""
            text = self.headers.get("Content-Length")
            if text is None or not text.strip().isdigit():
                raise RequestError(411 if text is None else 400, f"Content-Length must be a byte count, got {text!r}")
            length = int(text)
            if length > MAX_BODY:
                raise RequestError(413, f"request body over {MAX_BODY} bytes")
            try:
                body = self.rfile.read(length)
            except TimeoutError:
                raise RequestError(408, f"the body did not arrive within {TIMEOUT_S} s") from None
            if self._expired:
                raise RequestError(408, f"the request did not arrive within {TIMEOUT_S} s")
            if len(body) < length:
                raise RequestError(400, f"the body ended after {len(body)} of {length} bytes")
            try:
                request = json.loads(body.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise RequestError(400, f"the body is not UTF-8 ({e.reason} at byte {e.start})") from None
            except (ValueError, RecursionError) as e:
                raise RequestError(400, f"the body is not JSON ({type(e).__name__}: {str(e)[:200]})") from None
            if not isinstance(request, dict):
                raise RequestError(400, 'expected a JSON object {"query": ..., "passages": [...]}')
            return request

    return WidgetRequestHandler


class RequestError(ValueError):
    """A request the server answers with `status` and a JSON error."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class WidgetServer(ThreadingHTTPServer):
    request_queue_size = BACKLOG
    daemon_threads = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=FOLDER",
                        help="load the hyper-prompt adapter saved in FOLDER under NAME (repeatable)")
    args = parser.parse_args(argv)
    adapters: dict[str, str] = {}
    for spec in args.adapter:
        name, sep, folder = spec.partition("=")
        if not sep or not name.strip() or not folder.strip():
            parser.error(f"--adapter {spec!r}: expected NAME=FOLDER")
        if name in adapters:
            parser.error(f"--adapter {spec!r}: the name {name!r} is given twice")
        adapters[name] = folder
    try:
        endpoint = EndpointHandler(str(HERE), adapters=adapters)
    except (ValueError, OSError) as e:
        if not adapters:
            raise
        parser.error(f"could not load the model with the adapters {adapters}: {e}")
    server = WidgetServer((args.host, args.port), make_request_handler(endpoint))
    print(f"serving on http://{args.host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
