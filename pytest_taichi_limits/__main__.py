"""`python -m pytest_taichi_limits`: the `taichi-limits` command line (cli.py)."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
