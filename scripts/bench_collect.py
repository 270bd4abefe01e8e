#!/usr/bin/env python3
"""Gather docs/benchmarks/*.md into docs/benchmarks.md."""

from pathlib import Path

ORDER = ["core", "crypto", "mpi", "auth"]
parts = Path("docs/benchmarks")
files = sorted(parts.glob("*.md"), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem))
HEADER = "Measured on this project's 2-core machine; each section written by its script in one run."
text = ["# Benchmarks", "", HEADER, ""]
for f in files:
    text += [f.read_text(encoding="utf-8").strip(), ""]
Path("docs/benchmarks.md").write_text("\n".join(text), encoding="utf-8")
print("wrote docs/benchmarks.md")
