"""The demo's claim checker and deviation list, on hand-made result rows."""

import pytest

from bench.report.claims import ON_PAR_PTS, check_claims, deviations, format_claims, rows_from_table


def rows(naive=80.0, wd=81.0, tau=82.0, wb=83.0, hs=83.0, worst=10.0):
    per = [90.0] * 9 + [worst]
    return {"naive": {"all": naive, "per_class_min": per}, "wd": {"all": wd, "per_class_min": per},
            "tau-norm": {"all": tau, "per_class_min": per}, "wb": {"all": wb, "per_class_min": per},
            "hs": {"all": hs, "per_class_min": per}}


def test_every_claim_holds():
    claims = check_claims(rows())
    assert [c.holds for c in claims] == [True] * 5
    assert "wd 81.00 vs naive 80.00 (+1.00)" in claims[0].detail
    text = format_claims(claims, 3)
    assert text.startswith("Claims, on the mean test accuracy over 3 seeds") and "NOT" not in text


def test_claims_not_held_are_reported_with_the_reason():
    claims = check_claims(rows(naive=82.0, wd=81.0, tau=80.0, wb=80.5, hs=80.5 - ON_PAR_PTS - 0.01, worst=0.0))
    assert [c.holds for c in claims] == [False, False, False, False, False]
    text = format_claims(claims, 1, {"WD beats naive": "too few steps for weight decay"})
    assert "- [NOT shown] WD beats naive (WB): wd 81.00 vs naive 82.00 (-1.00) -- too few steps" in text
    assert "over 1 seed (" in text and "lowest class in any seed: tau-norm 0.0" in text


def test_on_par_tolerance_and_ties():
    assert check_claims(rows(wb=83.0, hs=83.0 - ON_PAR_PTS))[3].holds is True
    assert check_claims(rows(wd=80.0, naive=80.0))[0].holds is False      # a tie is not "beats"


def test_missing_rows_are_not_checked():
    r = rows()
    del r["hs"]
    claims = check_claims(r)
    assert claims[3].holds is None and claims[3].detail == "no hs row"
    assert claims[4].holds is False and "rows missing" in claims[4].detail
    assert "[not checked]" in format_claims(claims, 1)


def test_deviations_name_what_differs_from_the_recipe():
    stage1 = {"model": {"name": "resnet8_cifar"}, "train": {"epochs": 8, "lr": 0.05, "batch_size": 64,
              "momentum": 0.9, "schedule": "cosine", "weight_decay": 0.0}, "data": {"n_max": 5980},
              "eval": {"tta_flip": False}}
    wd = {**stage1, "train": {**stage1["train"], "weight_decay": 1e-3, "wd_scope": "all"}}
    wb = {"stage2": {"train": {"epochs": 10, "lr": 0.01, "weight_decay": 1e-3, "loss": {"name": "cb_ce",
          "cb_beta": 0.9999}}, "maxnorm_thresh": 0.5, "bn_mode": "train", "augment": "crop_flip"}}
    lines = deviations({"naive": stage1, "wd": wd, "wb": wb, "tau-norm": {"posthoc": {"tau": None}}},
                       {"wb": (["stage2.train.weight_decay", "stage2.maxnorm_thresh"], "chosen on val")}, 5980)
    shared, wd_line, wb_line, tau_line = lines
    assert shared.startswith("- stage 1 (naive, wd): ") and "epochs 8 (paper 320" in shared
    assert "lr 0.05 (paper 0.01" in shared and "eval.tta_flip False" in shared and "n_max" not in shared
    assert wd_line == "- wd: weight_decay 0.001 (paper 0.005: WB CIFAR-100-LT, tuned)"
    assert wb_line == ("- wb: stage2.train.loss.name cb_ce (paper cb_bce_softmax: WB code; HS weighted CE); "
                       "chosen on val")
    assert tau_line == "- tau-norm: posthoc.tau chosen on val (paper 1.9: WB code on the WD model)"
    (line,) = deviations({"naive": {**stage1, "data": {"n_max": 2000}}}, full_n_max=5980)
    assert "data.n_max 2000 (paper full: the full training pool)" in line


def test_full_demo_runs_the_papers_weight_decay():
    """--full: the papers' weight decay; only model size, schedule length, lr (the short schedule's) and the
    missing flip TTA depart from the papers, and the deviation line names each."""
    from bench.experiment import load_config
    from bench.launch.demo import CONFIG_DIR, FULL, STAGE1

    configs = {}
    for n in STAGE1:
        cfg = load_config(CONFIG_DIR / f"{n}.yaml", [*FULL.get(n, []), *FULL[""]])
        configs[cfg.method] = cfg.to_dict()
    (line,) = deviations(configs, full_n_max=5980)
    assert line.startswith("- stage 1 (naive, wd, hs-stage1): model.name resnet8_cifar")
    assert "epochs 20 (paper 320" in line and "lr 0.05 (paper 0.01" in line
    assert "weight_decay" not in line and "wd_in_loss" not in line          # the papers' 5e-3, both


def test_a_class_emptied_in_one_seed_fails_the_zero_class_claim(tmp_path):
    """rows_from_table keeps each class's lowest accuracy over the seeds: hs empties class 9 in seed 1 only,
    so its seeds' mean (10 %) would pass the claim; the per-seed minimum (0 %) does not."""
    from bench.report.aggregate import build_table
    from bench.report.collect import collect
    from tests.unit.test_table import write_run

    per = {0: [90.0] * 9 + [20.0], 1: [80.0] * 9 + [0.0]}
    for method in ("tau-norm", "wb", "hs"):
        for seed, acc in per.items():
            worst = acc if method == "hs" else [90.0] * 10
            write_run(tmp_path, [f"method={method}", f"seed={seed}"], all_=80.0 + seed,
                      extra={"per_class_acc": worst})
    rows = rows_from_table(build_table(collect([str(tmp_path)])))
    assert rows["hs"]["all"] == 80.5 and rows["hs"]["seeds"] == 2
    assert rows["hs"]["per_class_min"] == [80.0] * 9 + [0.0]
    claim = check_claims(rows)[4]
    assert claim.holds is False and "hs 0.0" in claim.detail


def test_two_rows_of_a_method_are_not_silently_merged(tmp_path):
    from bench.report.aggregate import build_table
    from bench.report.collect import collect
    from tests.unit.test_table import write_run

    write_run(tmp_path, ["method=wb", "seed=0"], all_=80.0)
    write_run(tmp_path, ["method=wb", "seed=0", "train.lr=0.2"], all_=70.0, sub="-lr0.2")
    with pytest.raises(RuntimeError, match="two rows of wb"):
        rows_from_table(build_table(collect([str(tmp_path)])))


def test_demo_full_and_quick_exclude_each_other(tmp_path):
    """`ltbench demo` runs one seed of the papers' weight decay; --full three seeds of it, --quick the 12-epoch
    configs: asking for both is a one-line error before anything runs."""
    from bench.config import ConfigError
    from bench.launch.demo import run_demo

    with pytest.raises(ConfigError, match="--full and --quick exclude each other"):
        run_demo(str(tmp_path), [], full=True, quick=True)
    assert not any(tmp_path.iterdir())
