"""One page per named optimizer and transform (stub)."""
from pathlib import Path


def write_pages(outdir: Path) -> list[str]:
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "index.md").write_text("# Optimizers\n\n(to come)\n")
    return []
