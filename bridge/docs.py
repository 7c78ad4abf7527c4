"""Documentation derived from the code: the README's generated blocks come from here.

The protocol tables come from the registry (`flowstate commands --markdown` prints them;
tests/bridge/test_docs.py fails when README.md and the registry disagree); the model catalogue
table from `bridge/catalogue_table.py` (tests/bridge/test_licences.py checks it). `python -m
bridge.docs` rewrites every block, so the README can never drift from what the daemon runs.
"""

from __future__ import annotations

from bridge.commands import EVENTS, iter_commands

BEGIN = "<!-- BEGIN GENERATED PROTOCOL TABLE (flowstate commands --markdown) -->"
END = "<!-- END GENERATED PROTOCOL TABLE -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_tables() -> str:
    lines = [
        "| Command | OSC address | Arguments | Replies (OSC) | What it does |",
        "|---|---|---|---|---|",
    ]
    for spec in iter_commands():
        args = "<br>".join(
            f"`{a.name}`: {a.expected()}" + ("" if a.required else f" = `{a.default!r}`") + f" — {a.help}"
            for a in spec.args
        ) or "—"
        returns = " ".join(f"`{r}`" for r in spec.returns) or "result as JSON"
        lines.append(
            f"| `{spec.name}` | `{spec.osc_address}` | {_cell(args)} | {returns} | {_cell(spec.help)} |"
        )
    lines += ["", "| Event | OSC address | Fields | Meaning |", "|---|---|---|---|"]
    for event in EVENTS.values():
        fields = " ".join(f"`{f}`" for f in event.fields)
        lines.append(f"| `{event.name}` | `{event.osc_address}` | {fields} | {_cell(event.help)} |")
    return "\n".join(lines)


def readme_block() -> str:
    return f"{BEGIN}\n{markdown_tables()}\n{END}"


def generated_blocks() -> list[tuple[str, str, str]]:
    """(begin marker, end marker, block) of every generated part of README.md."""
    from bridge import catalogue_table

    return [(BEGIN, END, readme_block()),
            (catalogue_table.BEGIN, catalogue_table.END, catalogue_table.readme_block())]


def update_readme(path: str = "README.md") -> bool:
    """Rewrite the generated blocks in README.md; returns True when one changed."""
    from pathlib import Path

    readme = Path(path)
    text = readme.read_text()
    updated = text
    for begin, end, block in generated_blocks():
        start, stop = updated.index(begin), updated.index(end) + len(end)
        updated = updated[:start] + block + updated[stop:]
    readme.write_text(updated)
    return updated != text


if __name__ == "__main__":
    print("README.md updated" if update_readme() else "README.md already up to date")
