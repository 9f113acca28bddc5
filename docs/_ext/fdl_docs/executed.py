"""Outputs of code run at build time (stub)."""
from pathlib import Path


def write_all(outdir: Path) -> list[str]:
    outdir.mkdir(parents=True, exist_ok=True)
    return []
