"""A local page to try the retriever in a browser, served from the model folder with the standard library.

    python widget.py [--host 127.0.0.1] [--port 8000]      # then open http://127.0.0.1:8000/

Type a query and candidate passages (one per line): the page shows each passage's score and the query's attention
over the prompt pool as a bar chart. The page can be filled from its address: /?query=...&passage=...&passage=...
GET / serves widget.html; POST /api/score takes {"query": str, "passages": [str, ...]} and answers
{"scores": [...], "attention": [...] or null}, or {"error": message} with status 400. Scoring is handler.py's.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from handler import EndpointHandler

HERE = Path(__file__).resolve().parent
MAX_BODY = 1 << 20


def make_request_handler(endpoint: EndpointHandler) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one loaded model."""
    page = (HERE / "widget.html").read_bytes()

    class WidgetRequestHandler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send_json(self, status: int, value: object) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.split("?")[0] in ("/", "/index.html"):
                self._send(200, page, "text/html; charset=utf-8")
            else:
                self._send_json(404, {"error": f"no page at {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/api/score":
                self._send_json(404, {"error": f"no endpoint at {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send_json(413, {"error": f"request body over {MAX_BODY} bytes"})
                return
            try:
                request = json.loads(self.rfile.read(length) or b"null")
            except json.JSONDecodeError as e:
                self._send_json(400, {"error": f"the body is not JSON ({e})"})
                return
            if not isinstance(request, dict):
                self._send_json(400, {"error": 'expected a JSON object {"query": ..., "passages": [...]}'})
                return
            query, passages = request.get("query"), request.get("passages")
            scores = endpoint({"inputs": {"source_sentence": query, "sentences": passages}})
            if isinstance(scores, dict):
                self._send_json(400, scores)
                return
            self._send_json(200, {"scores": scores, "attention": endpoint.prompt_attention(query)})

    return WidgetRequestHandler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    args = parser.parse_args(argv)
    server = HTTPServer((args.host, args.port), make_request_handler(EndpointHandler(str(HERE))))
    print(f"serving on http://{args.host}:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
