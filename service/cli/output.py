"""How the study commands print: tables sized for a pipe, errors in red with an exit code,
numbers and params in short form, and the line that says where a file was written."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

STATE_STYLES = {"running": "cyan", "finished": "green", "stopped": "yellow"}


def _stdout() -> Console:
    # Piped or captured, rich would squeeze tables into 80 columns; give them room instead.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def _params(params: dict[str, Any]) -> str:
    return "  ".join(f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in params.items())


def _write(target: Path, data: bytes) -> None:
    try:
        target.write_bytes(data)
    except OSError as exc:
        _fail(f"cannot write {target}: {exc.strerror or exc}")
    _stdout().print(f"wrote {escape(str(target))} ({len(data)} bytes)")
