"""The registry of published numbers (datasets/published): schema, provenance, labels, duplicates."""

import re
from pathlib import Path

import pytest
import yaml

from bench.report.published import PROVENANCE, check_file, load_published

REPO = Path(__file__).resolve().parents[2]
PUBLISHED = REPO / "datasets" / "published"
FILES = sorted(PUBLISHED.glob("*.yaml"))


def documented_labels() -> set[str]:
    """The labels of the "Method labels" table in datasets/published/README.md."""
    text = (PUBLISHED / "README.md").read_text()
    section = text.split("## Method labels", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M))


def dataset_cards() -> set[str]:
    return {p.stem for p in (REPO / "datasets").glob("*.yaml")}


def test_there_are_registry_files():
    assert len(FILES) >= 4
    assert {"naive", "wb", "crt", "lws", "tau-norm", "la", "balanced-softmax"} <= documented_labels()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_file_matches_the_schema(path):
    assert check_file(path, labels=documented_labels(), datasets=dataset_cards()) == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_row_resolves_to_a_full_source(path):
    doc = yaml.safe_load(path.read_text())
    paper = doc["paper"]
    assert paper["authors"] and paper["venue"] and isinstance(paper["year"], int) and paper["url"].startswith("http")
    for row in load_published(PUBLISHED):
        if row["file"] != path.name:
            continue
        for k in PROVENANCE:
            assert row.get(k) not in (None, ""), (path.name, row["method"], row["dataset"], k)
        assert str(row["url"]).startswith("http"), row
        for m in ("many", "medium", "few"):
            assert row.get(m) is None or row.get("all") is not None


def test_no_duplicate_rows_across_the_registry():
    keys = [(r["paper"]["title"], r["method"], r["dataset"], r.get("imbalance_factor"), r["backbone"])
            for r in load_published(PUBLISHED)]
    assert len(keys) == len(set(keys))


def test_the_checker_catches_broken_files(tmp_path):
    good = yaml.safe_load((PUBLISHED / "decoupling_iclr2020.yaml").read_text())

    def problems(mutate):
        doc = yaml.safe_load(yaml.safe_dump(good))
        mutate(doc)
        p = tmp_path / "x.yaml"
        p.write_text(yaml.safe_dump(doc))
        return "\n".join(check_file(p, labels=documented_labels(), datasets=dataset_cards()))

    assert problems(lambda d: None) == ""
    assert "not a percentage" in problems(lambda d: d["rows"][0].update(all=101))
    assert "not a percentage" in problems(lambda d: d["rows"][0].update(few="30"))
    assert "`all` is required" in problems(lambda d: d["rows"][0].pop("all"))
    assert "not a documented label" in problems(lambda d: d["rows"][0].update(method="joint"))
    assert "no dataset card" in problems(lambda d: d["rows"][0].update(dataset="ImageNet_LT"))
    assert "`protocol` does not resolve" in problems(lambda d: d["defaults"].pop("protocol"))
    assert "`url` does not resolve" in problems(lambda d: d["defaults"].pop("url"))
    assert "`selection` does not resolve" in problems(lambda d: d["defaults"].pop("selection"))
    assert "is not one of test, val, last, unknown" in problems(lambda d: d["rows"][0].update(selection="on test"))
    assert "paper.year" in problems(lambda d: d["paper"].pop("year"))
    assert "duplicate" in problems(lambda d: d["rows"].append(dict(d["rows"][0])))
    assert "unknown keys" in problems(lambda d: d["rows"][0].update(acc=1.0))
    assert "imbalance_factor" in problems(lambda d: d["rows"][0].update(imbalance_factor=0.01))


def test_reference_rows_carry_their_provenance(tmp_path):
    from bench.report.aggregate import published_rows

    rows = published_rows([("imagenet-lt", 256), ("cifar100", 100)])
    crt = [r for r in rows if r["method"] == "crt"]
    assert len(crt) == 1 and crt[0]["all"] == 49.6 and crt[0]["backbone"] == "ResNeXt-50"
    assert crt[0]["source"] == "Decoupling (ICLR 2020)" and crt[0]["paper"]["year"] == 2020
    # IF-200 CIFAR rows (Balanced Softmax README) do not land in an IF-100 column
    assert not [r for r in rows if r["dataset"] == "cifar100" and r.get("imbalance_factor") == 200]


def test_rows_name_what_their_source_config_trains():
    """Balanced Softmax's ImageNet-LT "Softmax" retrains a fresh classifier on frozen features (its config
    softmax_resnet10.yaml), so it is not end-to-end `ce`; Decoupling's tau_norm.py chooses no tau (it prints every
    tau on the split it is given), so that row's selection is not `val`."""
    rows = load_published()
    (softmax,) = [r for r in rows if r["file"] == "balanced_softmax_neurips2020.yaml" and r["dataset"] == "imagenet-lt"
                  and r["all"] == 34.8]
    assert softmax["method"] == "ce-retrain" and "softmax_resnet10.yaml" in softmax["url"]
    (tau,) = [r for r in rows if r["file"] == "decoupling_iclr2020.yaml" and r["method"] == "tau-norm"]
    assert tau["selection"] == "unknown"
