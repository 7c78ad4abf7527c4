"""The README's protocol tables are generated from the registry and must match it."""

from __future__ import annotations

from pathlib import Path

from bridge.docs import BEGIN, END, readme_block

ROOT = Path(__file__).resolve().parents[2]


def test_readme_protocol_table_matches_the_registry() -> None:
    readme = (ROOT / "README.md").read_text()
    assert BEGIN in readme and END in readme, "README.md lacks the generated protocol table markers"
    current = readme[readme.index(BEGIN) : readme.index(END) + len(END)]
    assert current == readme_block(), (
        "README.md's protocol table is stale: run `flowstate commands --markdown` and paste it "
        "between the markers (or `make readme`)"
    )


def test_readme_quick_start_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start") :].split("\n## ")[0]
    assert "make run" in quick and "make test" in quick


def test_readme_quick_start_sets_up_each_os_with_the_scripts_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start") :].split("\n## ")[0]
    for script in ("scripts/install.sh", "scripts\\install.ps1"):
        assert script in quick, script
        assert (ROOT / script.replace("\\", "/")).is_file(), script
    for words in ("**macOS**", "**Windows**", "**Linux**", "flowstate install-service", "Known gaps per platform"):
        assert words in quick, words
