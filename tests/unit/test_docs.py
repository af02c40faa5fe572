"""README stays in step with the code: every config key is documented, the two commands are shown."""

from bench.config import describe_fields


def test_readme_documents_every_config_key(repo):
    readme = (repo / "README.md").read_text()
    missing = [key for key, _, _ in describe_fields() if f"`{key}`" not in readme]
    assert not missing, f"README.md lacks config keys: {missing}"


def test_readme_quickstart_and_ci(repo):
    readme = (repo / "README.md").read_text()
    assert "make demo" in readme.split("\n## ", 2)[1] and "make test" in readme
    assert "make test" in (repo / ".ci" / "run").read_text()
