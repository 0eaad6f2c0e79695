"""``leantrain dashboard``: a local page that follows every run under a folder, live.

Why the standard library's http.server: the page is for one user on their own machine,
so a threaded stdlib server is enough and adds no dependency. The page polls
``/api/runs`` once a second; the server reads only the bytes appended to each
metrics.jsonl since the last poll, so a long run costs no more to follow than a short one.
Bound to 127.0.0.1 by default: run directories can name private data.
"""
from __future__ import annotations

import json
import os
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from leantrain.observe.runlog import TailedFile, is_run_dir, run_view

STATIC = Path(__file__).parent / "static"
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
          "/static/uPlot.iife.min.js": ("uPlot.iife.min.js", "text/javascript; charset=utf-8"),
          "/static/uPlot.min.css": ("uPlot.min.css", "text/css; charset=utf-8")}
MAX_POINTS = 2000  # per series sent to the page; enough for a chart's width
SEARCH_DEPTH = 3   # RUNS_DIR/ablation/rung is two levels down


def _thin(records: list[dict]) -> list[dict]:
    if len(records) <= MAX_POINTS:
        return records
    stride = len(records) / MAX_POINTS
    kept = [records[int(i * stride)] for i in range(MAX_POINTS - 1)]
    return kept + [records[-1]]


class RunWatcher:
    """Finds the run directories under a folder and keeps their metrics tailed."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.files: dict[Path, TailedFile] = {}
        self.lock = threading.Lock()

    def run_dirs(self) -> list[Path]:
        if is_run_dir(self.root):
            return [self.root]
        found = []
        for dirpath, dirnames, _ in os.walk(self.root):
            path = Path(dirpath)
            depth = len(path.relative_to(self.root).parts)
            if depth and is_run_dir(path):
                found.append(path)
                dirnames[:] = []  # a run's own subfolders (checkpoints, model) hold no runs
            elif depth >= SEARCH_DEPTH:
                dirnames[:] = []
            else:
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        return sorted(found)

    def snapshot(self) -> dict:
        runs = []
        with self.lock:
            for run_dir in self.run_dirs():
                tailed = self.files.setdefault(run_dir, TailedFile(run_dir / "metrics.jsonl"))
                records = [dict(r) for r in tailed.read()]
                view = run_view(run_dir, records)
                view["name"] = str(run_dir.relative_to(self.root)) if run_dir != self.root else run_dir.name
                view["train"], view["eval"] = _thin(view["train"]), _thin(view["eval"])
                view.pop("summary", None)
                runs.append(view)
        return {"root": str(self.root), "runs": runs}


def make_server(runs_dir: str | Path, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """A server (not yet serving) for ``runs_dir``; port 0 picks a free port."""
    watcher = RunWatcher(Path(runs_dir))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            route = self.path.split("?", 1)[0]
            if route == "/api/runs":
                self._send(json.dumps(watcher.snapshot(), default=str).encode(), "application/json")
            elif route in ASSETS:
                name, kind = ASSETS[route]
                self._send((STATIC / name).read_bytes(), kind)
            else:
                self.send_error(HTTPStatus.NOT_FOUND)

        def _send(self, body: bytes, kind: str) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # one line per poll would flood the terminal
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
