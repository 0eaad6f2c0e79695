"""``leantrain dashboard``: follow runs live in a local web page (see server.py)."""
from leantrain.dashboard.server import RunWatcher, make_server

__all__ = ["RunWatcher", "make_server"]
