"""``lmstack export <format> ...``: one sub-command per target format."""

from __future__ import annotations

import sys

FORMATS = {"gguf": ("lmstack.export.gguf", "main", "llama.cpp GGUF (f32, f16, q8_0, q4_0)")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in FORMATS:
        lines = [f"  {name:6s} {help_text}" for name, (_, _, help_text) in FORMATS.items()]
        print("usage: lmstack export FORMAT ...\n\nformats:\n" + "\n".join(lines), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib
    module, func, _ = FORMATS[argv[0]]
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
