"""The local widget page of the exported folder: its JSON endpoint, and the page as headless Chromium renders it;
adapters chosen per request (on tiny models)."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hub_run import POOL_SIZE
from PIL import Image
from test_handler import HUB_FILES, alone, make_tiny_adapters

QUERY = "what causes the seasons on earth"
PASSAGES = ["The tilt of Earth's axis causes the seasons.", "Moby-Dick is a novel by Herman Melville.",
            "Tides are raised by the Moon."]
WINDOW = (1000, 760)
SCORE_BLUE, ATTENTION_ORANGE = (0x2E, 0x86, 0xDE), (0xE4, 0x57, 0x2E)  # the bar colours in widget.html
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=15000"]


@contextlib.contextmanager
def serving(folder, home, *args: str, script: str = "widget.py", env: dict[str, str] | None = None):
    """`python widget.py --port 0 *args` (or `script`) run from `folder`, offline, with `env` added; yields its
    address, then stops it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home / "hf"), "PYTHONPATH": "", **(env or {})}
    with open(home / "stderr.log", "w") as stderr:
        server = subprocess.Popen([sys.executable, script, "--port", "0", *args], cwd=folder, env=env,
                                  stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), line + (home / "stderr.log").read_text()[-3000:]
        yield line.split()[-1]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def widget_url(hub_run, tmp_path_factory):
    """`python widget.py --port 0` run from the exported folder, offline; yields its address, then stops it."""
    with serving(hub_run.export_dir, tmp_path_factory.mktemp("widget_home")) as url:
        yield url


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url + "api/score", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_score_endpoint(widget_url, hub_run):
    status, answer = post(widget_url, json.dumps({"query": QUERY, "passages": PASSAGES}).encode())
    assert status == 200
    expected = hub_run.model.encode_corpus(PASSAGES) @ hub_run.model.encode_queries([QUERY])[0]
    np.testing.assert_allclose(answer["scores"], expected, atol=1e-6)
    np.testing.assert_allclose(answer["attention"], hub_run.model.prompt_attention([QUERY])[0], atol=1e-6)
    assert post(widget_url, json.dumps({"query": "", "passages": PASSAGES}).encode()) == (
        400, {"error": "\"source_sentence\" must be a non-blank string, got ''"})
    assert post(widget_url, b"not json")[0] == 400
    with urllib.request.urlopen(widget_url, timeout=30) as response:
        assert b'<textarea id="query"' in response.read()


def chromium() -> str:
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if found is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the widget page is not rendered")
    return found


def test_page_renders_scores_and_attention_in_headless_chromium(widget_url, tmp_path):
    browser = chromium()
    query = urllib.parse.urlencode([("query", QUERY), *(("passage", p) for p in PASSAGES)])
    page = f"{widget_url}?{query}"  # the page fills itself from its address and scores on load
    _, expected = post(widget_url, json.dumps({"query": QUERY, "passages": PASSAGES}).encode())

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args, page],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)

    dom = run("--dump-dom").stdout
    assert 'data-state="done"' in dom, dom[-2000:]
    shown_scores = [float(v) for v in _attribute_values(dom, "data-score")]
    assert sorted(shown_scores, reverse=True) == shown_scores  # ranked by score
    assert sorted(shown_scores) == pytest.approx(sorted(expected["scores"]), abs=1e-9)
    np.testing.assert_allclose([float(v) for v in _attribute_values(dom, "data-weight")], expected["attention"])
    assert dom.count('class="attention-bar"') == POOL_SIZE

    shot = tmp_path / "widget.png"
    result = run(f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}")
    assert shot.is_file(), result.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (WINDOW[1], WINDOW[0])
    # Both charts are drawn: bar-coloured areas of real size (the longest score bar is 120 x 14 px).
    assert np.all(image == SCORE_BLUE, axis=-1).sum() > 1000
    assert np.all(image == ATTENTION_ORANGE, axis=-1).sum() > 2000


def _attribute_values(html: str, name: str) -> list[str]:
    marker = f'{name}="'
    return [part.split('"', 1)[0] for part in html.split(marker)[1:]]


def raw_request(url: str, data: bytes, timeout: float = 30) -> tuple[int, dict]:
    """Sends bytes as they are (headers included) and reads the status and JSON body of the answer."""
    import socket

    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(("request_bytes", "status", "message"), [
    (b"Content-Length: abc\r\n\r\n{}", 400, "Content-Length must be a byte count"),
    (b"Content-Length: -5\r\n\r\n{}", 400, "Content-Length must be a byte count"),
    (b"\r\n{}", 411, "Content-Length must be a byte count"),
    (b"Content-Length: 9999999\r\n\r\n{}", 413, "request body over"),
    (b"Content-Length: 10\r\n\r\n\xff\xfe{}\xff\xfe{}\xff\xfe", 400, "not UTF-8"),
    (b"Content-Length: 40000\r\n\r\n" + b"[" * 20000 + b"]" * 20000, 400, "not JSON"),
    (b'Content-Length: 40\r\n\r\n{"query": "\\ud800", "passages": ["a b"]}', 400, "not valid Unicode"),
])
def test_malformed_requests_get_a_4xx_and_a_json_error(widget_url, request_bytes, status, message):
    got_status, answer = raw_request(widget_url, b"POST /api/score HTTP/1.1\r\nHost: x\r\n" + request_bytes)
    assert got_status == status and message in answer["error"]


def test_an_idle_connection_blocks_no_one(widget_url):
    import socket
    import time

    parsed = urllib.parse.urlsplit(widget_url)
    with socket.create_connection((parsed.hostname, parsed.port)) as idle:
        idle.sendall(b"POST /api/score HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # half a request, then nothing
        start = time.perf_counter()
        status, answer = post(widget_url, json.dumps({"query": QUERY, "passages": PASSAGES}).encode())
        assert status == 200 and len(answer["scores"]) == 3
        assert time.perf_counter() - start < 8  # answered while the other connection still waits (10 s timeout)
        idle.settimeout(30)
        head = idle.recv(65536)
    assert b" 408 " in head.split(b"\r\n")[0]  # the half-sent request timed out, with an answer


def test_a_slow_sender_is_dropped_at_the_deadline(widget_url):
    """A client that sends a byte every 3 s never hits the idle timeout; the 10 s deadline still ends its request."""
    import socket
    import time

    parsed = urllib.parse.urlsplit(widget_url)
    with socket.create_connection((parsed.hostname, parsed.port)) as slow:
        slow.settimeout(1)
        start, head = time.perf_counter(), b""
        request = b"POST /api/score HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"{" * 100
        for byte in request:
            try:
                slow.sendall(bytes([byte]))
                head = slow.recv(65536)  # the server answers or closes within a second of the deadline
                break
            except TimeoutError:
                time.sleep(2)
            except OSError:
                break
            if time.perf_counter() - start > 30:
                break
    assert time.perf_counter() - start < 14  # ended at the 10 s deadline, not after 100 bytes x 3 s
    assert head == b"" or b"408" in head or b"400" in head  # closed, or answered with an error (a cut request line)


def test_the_largest_request_allowed_is_answered_and_a_larger_one_is_413(widget_url):
    """Its time is bench/handler.py's to measure."""
    passage = "The tilt of Earth's axis changes how directly sunlight reaches each hemisphere. " * 40  # 602 tokens
    passages = [passage] * 54  # 32,508 tokens with the query: inside the 32,768 a request may read
    status, answer = post(widget_url, json.dumps({"query": QUERY, "passages": passages}).encode())
    assert status == 200 and len(answer["scores"]) == 54
    status, answer = post(widget_url, json.dumps({"query": QUERY, "passages": [passage] * 55}).encode())
    assert status == 413 and "at most 32768 per request" in answer["error"]
    status, answer = post(widget_url, json.dumps({"query": QUERY, "passages": ["word " * 19_000] * 5}).encode())
    assert status == 413 and "at most 400000 per request" in answer["error"]


def test_twenty_parallel_clients_are_all_answered(widget_url):
    body = json.dumps({"query": QUERY, "passages": PASSAGES}).encode()
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda _: post(widget_url, body)[0], range(20)))
    assert statuses == [200] * 20


@pytest.fixture(scope="module")
def tiny_root(minilm_path, tmp_path_factory):
    """The folder of tests/test_handler.py's make_tiny_adapters."""
    return make_tiny_adapters(minilm_path, tmp_path_factory.mktemp("widget_adapters"))


COUNTING_WIDGET = '''"""widget.py with its model's calls logged to $WIDGET_LOG, one line each ("call QUERY"), as
are the requests read ("read QUERY") and the POSTs ended ("done"); a request whose query is "hold" keeps the model
until $WIDGET_LOG.release exists (at most 60 s)."""
import os
import sys
import threading
import time
from pathlib import Path

import handler
import widget

LOG = Path(os.environ["WIDGET_LOG"])
RELEASE = Path(str(LOG) + ".release")
lock = threading.Lock()


def log(line):
    with lock, LOG.open("a") as f:
        f.write(line + "\\n")


score = handler.EndpointHandler.__call__


def counted(self, data):
    query = data["inputs"]["source_sentence"]
    log(f"call {query}")
    deadline = time.monotonic() + 60
    while query == "hold" and not RELEASE.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return score(self, data)


handler.EndpointHandler.__call__ = counted
make = widget.make_request_handler


def logged(endpoint):
    class Logged(make(endpoint)):
        def _read_json(self):
            request = super()._read_json()
            log(f"read {request.get('query')}")
            return request

        def do_POST(self):
            try:
                super().do_POST()
            finally:
                log("done")

    return Logged


widget.make_request_handler = logged
widget.main(sys.argv[1:])
'''


def test_abandoned_requests_are_not_computed(tiny_root, tmp_path):
    """One request holds the model; six more arrive whole, their clients closing right after sending; a small one
    arrives last. The six are dropped at their turn without reaching the model: the small one waits only for the
    first (the model's calls are counted, in the server)."""
    import socket
    import time

    folder = tmp_path / "served"
    shutil.copytree(tiny_root / "backbone", folder)
    for name in ("handler.py", "widget.py", "widget.html"):
        shutil.copyfile(HUB_FILES / name, folder / name)
    (folder / "counting_widget.py").write_text(COUNTING_WIDGET)
    log = tmp_path / "widget.log"
    log.touch()

    def lines(prefix: str) -> list[str]:
        return [line for line in log.read_text().splitlines() if line.startswith(prefix)]

    def wait_for(prefix: str, count: int) -> None:
        deadline = time.monotonic() + 60
        while len(lines(prefix)) < count:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)

    def request(query: str) -> bytes:
        body = json.dumps({"query": query, "passages": PASSAGES}).encode()
        return b"POST /api/score HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    with serving(folder, tmp_path, script="counting_widget.py", env={"WIDGET_LOG": str(log)}) as url:
        parsed = urllib.parse.urlsplit(url)
        with socket.create_connection((parsed.hostname, parsed.port), timeout=60) as holder:
            holder.sendall(request("hold"))
            wait_for("call hold", 1)  # the model is held
            for i in range(6):
                with socket.create_connection((parsed.hostname, parsed.port), timeout=60) as gone:
                    gone.sendall(request(f"gone {i}"))  # closed right after sending
            wait_for("read gone", 6)  # all six read whole, waiting for the model
            with ThreadPoolExecutor(1) as pool:
                small = pool.submit(post, url, json.dumps({"query": "small", "passages": PASSAGES[:1]}).encode())
                wait_for("read small", 1)
                (tmp_path / "widget.log.release").touch()
                status, answer = small.result(timeout=60)
            holder.settimeout(60)
            held = b""
            while chunk := holder.recv(65536):
                held += chunk
        assert status == 200 and len(answer["scores"]) == 1
        assert held.startswith(b"HTTP/1.0 200 ")
        wait_for("done", 8)  # every request ended: answered or dropped
    assert lines("call") == ["call hold", "call small"]  # the six abandoned ones never reached the model


@pytest.fixture(scope="module")
def adapter_widget(tiny_root, tmp_path_factory):
    """The widget of a tiny plain backbone with adapter a under its adapters/ and b given by --adapter: its address,
    and the folder of tests/test_handler.py's make_tiny_adapters."""
    root = tiny_root
    folder = root / "served"
    shutil.copytree(root / "backbone", folder)
    shutil.copytree(root / "a", folder / "adapters" / "a")
    for name in ("handler.py", "widget.py", "widget.html"):
        shutil.copyfile(HUB_FILES / name, folder / name)
    with serving(folder, tmp_path_factory.mktemp("widget_adapters_home"), "--adapter", f"b={root / 'b'}") as url:
        yield url, root


def get_json(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, json.loads(response.read())


def test_adapters_endpoint_lists_the_loaded_ones(adapter_widget):
    url, _ = adapter_widget
    assert get_json(url + "api/adapters") == (200, {"adapters": ["a", "b"], "active": "a"})
    with urllib.request.urlopen(url, timeout=30) as response:
        assert b'<select id="adapter">' in response.read()  # the page's choice, shown when two or more are listed


def test_score_endpoint_with_an_adapter(adapter_widget):
    url, root = adapter_widget
    passages = alone(root, None).encode_corpus(PASSAGES)
    scores = {}
    for name in ("a", "b"):
        model = alone(root, name)
        status, answer = post(url, json.dumps({"query": QUERY, "passages": PASSAGES, "adapter": name}).encode())
        assert status == 200
        scores[name] = answer["scores"]
        np.testing.assert_allclose(answer["scores"], passages @ model.encode_queries([QUERY])[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(answer["attention"], model.prompt_attention([QUERY])[0], rtol=0, atol=1e-6)
    assert np.abs(np.array(scores["a"]) - np.array(scores["b"])).max() > 1e-3
    assert post(url, json.dumps({"query": QUERY, "passages": PASSAGES}).encode())[1]["scores"] == scores["a"]
    assert post(url, json.dumps({"query": QUERY, "passages": PASSAGES, "adapter": "c"}).encode()) == (
        400, {"error": "\"adapter\": unknown adapter 'c'; loaded: ['a', 'b']"})
    status, answer = post(url, json.dumps({"query": QUERY, "passages": PASSAGES, "adapter": 1}).encode())
    assert status == 400 and "must be a string naming a loaded adapter" in answer["error"]
    assert get_json(url + "api/adapters")[1]["active"] == "a"  # the requests left the active adapter as it was
