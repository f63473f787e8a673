"""The bundled shapes dataset for the examples, rendered by the `mirante` command-line tool
(`MIRANTE_BIN`, else `mirante` on the PATH, else this repository's `target/release/mirante` or
`target/debug/mirante`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def mirante_cli() -> str:
    """The command-line tool that renders the dataset."""
    for candidate in (
        os.environ.get("MIRANTE_BIN"),
        shutil.which("mirante"),
        REPO / "target/release/mirante",
        REPO / "target/debug/mirante",
    ):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    sys.exit(
        "no mirante binary: `cargo build --release --bin mirante` or set MIRANTE_BIN"
    )


def render_shapes(
    out: Path, rows: int, *, seed: int | None = None, quiet: bool = False
) -> Path:
    """Renders `rows` scenes into the imagefolder `out` (`metadata.jsonl` and images)."""
    command = [
        mirante_cli(),
        "dataset",
        "shapes",
        "--out",
        str(out),
        "--rows",
        str(rows),
    ]
    if seed is not None:
        command += ["--seed", str(seed)]
    subprocess.run(command, check=True, capture_output=quiet)
    return out
