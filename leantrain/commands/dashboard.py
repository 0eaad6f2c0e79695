"""`leantrain dashboard`: a local page following every run under a folder, live."""
from __future__ import annotations


def register(subparsers) -> dict:
    parser = subparsers.add_parser("dashboard", help="a live local web page of the runs under a folder")
    parser.add_argument("runs_dir", nargs="?", default="runs", metavar="RUNS_DIR", help="folder of run directories (default: runs)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    return {"dashboard": _dashboard}


def _dashboard(args) -> int:
    from pathlib import Path

    from leantrain.dashboard import make_server
    from leantrain.errors import UserError

    if not Path(args.runs_dir).is_dir():
        raise UserError(f"dashboard: {args.runs_dir} is not a folder; give the folder your runs write to (default: runs)")
    try:
        server = make_server(args.runs_dir, args.host, args.port)
    except OSError as exc:
        raise UserError(f"dashboard: cannot listen on {args.host}:{args.port} ({exc.strerror}); choose another --port") from None
    host, port = server.server_address[:2]
    print(f"leantrain dashboard: http://{host}:{port}/ following {args.runs_dir} (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
