"""docs/config.md is generated from the schema and kept in step with it."""

from bench.config.describe import config_markdown
from bench.config import describe_fields

REGENERATE = "ltbench config --describe --format markdown > docs/config.md"


def test_config_md_is_the_generated_reference(repo):
    text = (repo / "docs" / "config.md").read_text(encoding="utf-8")
    assert text == config_markdown(), f"docs/config.md is out of date with the schema; regenerate it: {REGENERATE}"


def test_config_md_names_every_key(repo):
    text = (repo / "docs" / "config.md").read_text(encoding="utf-8")
    missing = [key for key, _, _ in describe_fields() if f"`{key}`" not in text]
    assert not missing, f"docs/config.md lacks config keys {missing}; regenerate it: {REGENERATE}"


def test_markdown_flag_is_an_alias_of_format_markdown(capsys):
    from bench.cli import main

    assert main(["config", "--describe", "--markdown"]) == 0
    alias = capsys.readouterr().out
    assert main(["config", "--describe", "--format", "markdown"]) == 0
    assert alias == capsys.readouterr().out == config_markdown()
