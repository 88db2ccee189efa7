"""Plain-text tables for the benchmark's reports: right-aligned columns under a header and a rule."""

from __future__ import annotations

__all__ = ["grid"]


def grid(headers: list[str], rows: list[list[str]]) -> str:
    """The rows under the headers, each column as wide as its widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
