"""Run the README's quoted commands and show where their output differs from the quoted output.

A ```bash block followed directly by a ```text block is a quoted run: its commands (comments dropped,
`\\` continuations joined, `onnxprune` run as `python -m onnxprune` from this checkout) run in order in
one scratch folder holding a copy of models/, and their stdout is compared line by line with the text
block. What varies from run to run is masked on both sides: the `seconds` summary line, the timing of
the sweep's `model` header line, and the `latency` and `seconds` columns of a table whose header names
them. Exit 1 when a quoted output differs. `--write`: replace every quoted output that differs with
what this run printed (then review the README's prose that quotes those numbers).

    python benchmarks/readme_quickstart.py [--write] [README.md]
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)
VARYING_COLUMNS = ("latency", "seconds")


def quoted_runs(readme: str) -> list[tuple[list[str], str]]:
    """(commands, quoted output) for every bash block followed directly by a text block."""
    blocks = [(m.group(1), m.group(2), m.start(), m.end()) for m in BLOCK.finditer(readme)]
    runs = []
    for (kind, body, _, end), (next_kind, text, start, _) in zip(blocks, blocks[1:], strict=False):
        if kind == "bash" and next_kind == "text" and not readme[end:start].strip():
            joined = body.replace("\\\n", " ")
            commands = [line.split("#")[0].strip() for line in joined.splitlines()]
            runs.append(([c for c in commands if c], text))
    return runs


def masked(text: str) -> list[str]:
    """The lines of `text` with what varies between runs replaced by '*' (a table's cells are
    right-aligned under their header word, so a varying column is the cells ending where it ends)."""
    lines, ends = [], set()
    for line in text.rstrip("\n").splitlines():
        words = line.split()
        if words[:1] == ["seconds"]:
            line = "seconds *"
        elif words[:1] == ["model"]:
            line = re.sub(r"[\d.]+ ms at", "* ms at", line)
        elif words[:1] == ["method"] and any(w in VARYING_COLUMNS for w in words):
            ends = {m.end() for m in re.finditer(r"\S+", line) if m.group() in VARYING_COLUMNS}
        elif ends:
            line = "".join("*" if m.end() in ends else m.group() for m in re.finditer(r"\S+|\s+", line))
        lines.append(" ".join(line.split()))
    return lines


def run(commands: list[str], folder: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = []
    for command in commands:
        words = shlex.split(command)
        if words[0] == "onnxprune":
            words = [sys.executable, "-m", "onnxprune", *words[1:]]
        done = subprocess.run(words, cwd=folder, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{command}: exit {done.returncode}\n{done.stderr}")
        out.append(done.stdout)
    return "".join(out)


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--write"]
    write = len(args) < len(sys.argv) - 1
    path = Path(args[0] if args else ROOT / "README.md")
    readme = path.read_text()
    failed, updated = 0, readme
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        shutil.copytree(ROOT / "models", folder / "models")
        for commands, quoted in quoted_runs(readme):
            printed = run(commands, folder)
            want, got = masked(quoted), masked(printed)
            same = want == got
            failed += not same
            print(f"{'same' if same else 'DIFFERS'}: {commands[-1][:100]}")
            if not same:
                for a, b in zip(want + [""] * len(got), got + [""] * len(want), strict=False):
                    if a != b:
                        print(f"  quoted : {a}\n  printed: {b}")
                if write:
                    updated = updated.replace(f"```text\n{quoted}```", f"```text\n{printed}```", 1)
    if write and updated != readme:
        path.write_text(updated)
        print(f"wrote the printed outputs into {path}")
    sys.exit(1 if failed and not write else 0)


if __name__ == "__main__":
    main()
