"""Sub-commands beyond the core ones in ``leantrain/cli.py``, one module each.

Each module defines ``register(subparsers) -> {name: handler}``; handlers take the
parsed args and return an exit code. Keep the logic in the library; a command module
only parses, calls and prints. Modules must import heavy libraries inside handlers so
that ``leantrain --help`` stays fast.
"""
