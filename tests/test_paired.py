"""The paired view, trials.csv, importance and the answer's wording, on a real MLflow sqlite store written
through the tracking backend (the driver's own calls: open_study, start_trial, end_trial, close)."""

import csv
import math

import numpy as np
import pytest
import scipy.stats

from moetune import contract
from moetune.contract import FinalReport, Outcome
from moetune.report import answer, budget, export, importance, paired, reduction, sweep
from moetune.tracking import tags
from moetune.tracking.base import RecordedStudy, RecordedTrial
from moetune.tracking.mlflow_store import MlflowTracking

SWEEP = "paired-sweep"
N = 8
LR = [1e-3 * 1.8**i for i in range(N)]  # trial n's sampled learning rate, the same in every arm
E_PERM = [1, 2, 3, 1, 2, 3, 1, 2]
BASE = np.array([0.50, 0.42, 0.61, 0.47, 0.55, 0.40, 0.58, 0.45])  # off's test_loss per trial
D_ON = np.array([-0.05, -0.02, -0.03, 0.01, -0.04, -0.06, 0.0, -0.01])  # on − off, by construction
D_FROZEN = np.array([-0.01, 0.02, -0.02, 0.0, 0.01, 0.03, -0.01, 0.02])  # frozen − off
D_WARMUP = np.zeros(N)  # warmup changes nothing: every difference is zero
FAILED_FROZEN = 5  # frozen's trial 5 fails: it pairs with nothing
SPACE_OFF = {"train.lr": "FloatDistribution(high=0.03, log=True, low=0.001, step=None)"}
SPACE_ON = {**SPACE_OFF, "local_search.e_perm": "IntDistribution(high=3, log=False, low=1, step=1)"}


def _record_study(tracking, arm, diffs):
    study_tags = {
        tags.GATE: "topk",
        tags.LOCAL_SEARCH: arm,
        tags.DATASET: "synthetic",
        tags.TASK_WEIGHTS: "equal",
        tags.SAMPLER: "random",
        tags.SEED: "0",
        tags.SWEEP: SWEEP,
        tags.HEADLINE_METRIC: "test_loss",
    }
    phased = arm != "off"
    record = tracking.open_study(f"topk-{arm}-synthetic-seed0", study_tags, SPACE_ON if phased else SPACE_OFF, "x: 1\n")
    for n in range(N):
        sampled = {"train.lr": LR[n], **({"local_search.e_perm": E_PERM[n]} if phased else {})}
        record.start_trial(n, {**sampled, "train.seed": 1000 + n}, sampled, f"{arm}-{n}")
        if arm == "frozen" and n == FAILED_FROZEN:
            record.end_trial(n, Outcome.FAILED, error="ValueError: nan loss")
            continue
        test = float(BASE[n] + diffs[n])
        metrics = {
            "best_val_loss": test + 0.01 * math.sin(n),
            "test_loss": test,
            "test_watch_auc": 1 - test,
            contract.BEST_EPOCH: 4.0 + n % 3,
            contract.EPOCHS_RUN: 8.0,
            contract.WALL_SECONDS: 10.0 + n,
        }
        if phased:
            metrics |= {
                contract.E_PERM: float(E_PERM[n]),
                contract.PERM_STEPS: 100.0 * E_PERM[n],
                contract.PERM_SHIFT: 0.01 * (n + 1),
                contract.PERM_REASSIGNED: float(n % 4),
                contract.PERM_EFFECTIVE_START: 1.7,
                contract.PERM_EFFECTIVE_END: 1.2,
                contract.BEST_EPOCH_AFTER_PERM: 4.0 + n % 3 - E_PERM[n],
            }
        record.end_trial(n, Outcome.FINISHED, FinalReport(metrics, {tags.INIT_DIGEST: f"digest-{n}"}))
    record.close({}, complete=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    uri = f"sqlite:///{root}/mlflow.db"
    tracking = MlflowTracking(uri, artifact_root=str(root / "artifacts"), experiment=SWEEP)
    for arm, diffs in (("off", np.zeros(N)), ("on", D_ON), ("frozen", D_FROZEN), ("warmup", D_WARMUP)):
        _record_study(tracking, arm, diffs)
    return uri, root


@pytest.fixture(scope="module")
def studies(store):
    uri, _ = store
    return sweep.read_sweep(MlflowTracking(uri, experiment=SWEEP)).studies


@pytest.fixture(scope="module")
def exported(store):
    uri, root = store
    return export.export_sweep(MlflowTracking(uri, experiment=SWEEP), root / "export", resamples=300, seed=0)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_reading_a_sweep_carries_each_trials_params_seed_digest_and_error(studies):
    by_arm = {s.tags[tags.LOCAL_SEARCH]: s for s in studies}
    on, frozen = by_arm["on"], by_arm["frozen"]
    assert on.space == SPACE_ON and by_arm["off"].space == SPACE_OFF
    t = on.trials[3]
    assert (t.index, t.status, t.seed, t.init_digest, t.error) == (3, "FINISHED", "1003", "digest-3", None)
    assert t.sampled == {"train.lr": str(LR[3]), "local_search.e_perm": "1"}
    failed = frozen.trials[FAILED_FROZEN]
    assert (failed.status, failed.finished, failed.error, failed.init_digest) == (
        "FAILED",
        False,
        "ValueError: nan loss",
        None,
    )


def test_paired_table_gives_the_known_differences(exported):
    rows = {(r["comparison"], r["metric"]): r for r in _rows(exported.files["paired.csv"])}
    assert set(rows) == {
        (c, m)
        for c in ("on − off", "frozen − off", "warmup − off", "on − frozen")
        for m in ("test_loss", "test_watch_auc")
    }
    keep = np.arange(N) != FAILED_FROZEN
    expected = {
        "on − off": (D_ON, 0),
        "frozen − off": (D_FROZEN[keep], 1),  # off's trial 5 has no finished twin
        "warmup − off": (D_WARMUP, 0),
        "on − frozen": ((D_ON - D_FROZEN)[keep], 1),
    }
    for name, (d, unpaired) in expected.items():
        row = rows[(name, "test_loss")]
        assert int(row["n_pairs"]) == d.size and int(row["n_unpaired"]) == unpaired
        assert int(row["n_mismatched"]) == 0  # pairs share train.seed and train.lr
        assert float(row["mean"]) == pytest.approx(d.mean(), abs=1e-12)
        assert float(row["median"]) == pytest.approx(np.median(d), abs=1e-12)
        assert float(row["share_better"]) == pytest.approx(np.mean(d < -1e-12))  # lower loss is better
        if d.any():
            assert float(row["mean_low"]) <= d.mean() <= float(row["mean_high"])
        # test_watch_auc = 1 − test_loss: the differences flip sign, and "better" flips with the direction
        auc = rows[(name, "test_watch_auc")]
        assert float(auc["mean"]) == pytest.approx(-d.mean(), abs=1e-12)
        assert float(auc["share_better"]) == pytest.approx(np.mean(-d > 1e-12))
    assert float(rows[("on − off", "test_loss")]["share_better"]) == 6 / 8
    warm = rows[("warmup − off", "test_loss")]
    assert float(warm["wilcoxon_p"]) == 1.0 and float(warm["mean_low"]) == float(warm["mean_high"]) == 0.0


def test_wilcoxon_p_matches_scipy_on_the_same_differences(exported, studies):
    rows = {(r["comparison"], r["metric"]): r for r in _rows(exported.files["paired.csv"])}
    loss = {
        s.tags[tags.LOCAL_SEARCH]: {t.index: t.metrics["test_loss"] for t in s.trials if t.finished} for s in studies
    }
    for arm, base in (("on", "off"), ("frozen", "off"), ("on", "frozen")):
        pairs = sorted(loss[arm].keys() & loss[base].keys())
        d = np.array([loss[arm][n] - loss[base][n] for n in pairs])  # the differences as the store holds them
        assert float(rows[(f"{arm} − {base}", "test_loss")]["wilcoxon_p"]) == scipy.stats.wilcoxon(d).pvalue
    assert math.isnan(paired.wilcoxon_p(np.array([0.3])))  # one pair: no test
    assert paired.wilcoxon_p(np.zeros(5)) == 1.0  # all zero: no difference, no scipy warning


def test_paired_bootstrap_is_seeded_and_resamples_pairs():
    d = np.array([-0.05, -0.02, -0.03, 0.01, -0.04, -0.06, 0.0, -0.01])
    got = paired.bootstrap_intervals(d, 500, 7, 0.9)
    assert got == paired.bootstrap_intervals(d, 500, 7, 0.9)
    draws = d[np.random.default_rng(7).integers(0, d.size, size=(500, d.size))]
    np.testing.assert_allclose(got[:2], np.quantile(draws.mean(axis=1), [0.05, 0.95]))
    np.testing.assert_allclose(got[2:], np.quantile(np.median(draws, axis=1), [0.05, 0.95]))
    assert all(math.isnan(x) for x in paired.bootstrap_intervals(d[:1], 500, 7, 0.9))


def test_summary_says_what_each_comparison_isolates_and_draws_the_pairs(exported):
    text = exported.files["summary.md"].read_text()
    section = text.split("## Paired comparisons")[1].split("\n## ")[0]
    assert "- on − frozen: learning the permutation" in section
    assert "- frozen − off: the phase's soft mixing and its hardening to a permutation, nothing learned" in section
    assert "- warmup − off: a dense start" in section and "not a control for the permutation" in section
    assert "| Top-k | synthetic | on − off | 8 |" in section
    assert exported.files["paired_test_loss.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = exported.files["paired_test_loss.svg"].read_text()
    assert "on − frozen" in svg and "(7 pairs)" in svg


def test_trials_csv_has_one_row_per_trial_with_the_named_columns(exported):
    rows = _rows(exported.files["trials.csv"])
    assert len(rows) == 4 * N  # FINISHED and FAILED alike
    named = [
        "study", "gate", "local_search", "dataset", "task_weights", "trial", "seed", "init_digest",
        "train.lr", "local_search.e_perm", "e_perm", "perm_steps", "best_epoch", "epochs_run", "status",
        "best_val_loss", "test_loss", "test_watch_auc", "wall_seconds", "cpu_seconds", "perm_shift",
        "perm_reassigned", "perm_effective_experts_start", "perm_effective_experts_end", "best_epoch_after_perm",
        "active_experts_mean", "routing_nmi",
    ]  # fmt: skip
    cols = list(rows[0])
    assert set(named) <= set(cols)
    assert cols.index("init_digest") < cols.index("train.lr") < cols.index("e_perm") < cols.index("best_val_loss")
    on3 = next(r for r in rows if (r["local_search"], r["trial"]) == ("on", "3"))
    assert (on3["seed"], on3["init_digest"], on3["train.lr"], on3["local_search.e_perm"]) == (
        "1003",
        "digest-3",
        str(LR[3]),
        "1",
    )
    assert (on3["e_perm"], on3["perm_steps"], on3["best_epoch"], on3["best_epoch_after_perm"]) == ("1", "100", "4", "3")
    assert float(on3["test_loss"]) == pytest.approx(BASE[3] + D_ON[3])
    off3 = next(r for r in rows if (r["local_search"], r["trial"]) == ("off", "3"))
    assert off3["local_search.e_perm"] == off3["perm_steps"] == off3["perm_shift"] == ""  # absent: empty
    failed = next(r for r in rows if (r["local_search"], r["trial"]) == ("frozen", str(FAILED_FROZEN)))
    assert (failed["status"], failed["error"], failed["test_loss"]) == ("FAILED", "ValueError: nan loss", "")


def test_summary_gives_the_permutation_phase_per_study(exported):
    text = exported.files["summary.md"].read_text()
    section = text.split("## Local search inside the trials")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| topk-on-synthetic-seed0 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["on", str(N)]
    steps = [100 * e for e in E_PERM]
    assert cells[3] == f"{np.median(steps):.3g} ({min(steps):.3g}–{max(steps):.3g})"  # perm_steps
    assert cells[5] == "1.5 (0–3)"  # perm_reassigned
    assert "topk-off-synthetic-seed0" not in section  # no phase, no row
    frozen = next(line for line in section.splitlines() if line.startswith("| topk-frozen-synthetic-seed0 |"))
    assert f"| frozen | {N - 1} |" in frozen  # over its finished trials


def test_importance_runs_on_a_small_study_and_gives_a_row_per_parameter(studies, exported):
    on = next(s for s in studies if s.tags[tags.LOCAL_SEARCH] == "on")
    result = importance.study_importance(on, "best_val_loss")
    assert result.skipped is None and result.n_trials == N
    assert set(result.values) == {"train.lr", "local_search.e_perm"}
    assert sum(result.values.values()) == pytest.approx(1.0) and all(v >= 0 for v in result.values.values())
    assert importance.study_importance(on, "best_val_loss").values == result.values  # seeded
    dist = importance.parse_distribution(SPACE_ON["train.lr"])
    assert (dist.low, dist.high, dist.log) == (0.001, 0.03, True)
    assert importance.parse_distribution("__import__('os').system('true')") is None  # parsed, never evaluated
    # off searches one parameter: skipped, with the reason in summary.md
    off = next(s for s in studies if s.tags[tags.LOCAL_SEARCH] == "off")
    assert "at least 2" in importance.study_importance(off, "best_val_loss").skipped
    rows = _rows(exported.files["importance.csv"])
    assert {(r["local_search"], r["param"]) for r in rows} == {
        (arm, p) for arm in ("on", "frozen", "warmup") for p in ("train.lr", "local_search.e_perm")
    }
    assert {r["n_trials"] for r in rows if r["local_search"] == "frozen"} == {str(N - 1)}
    on_rows = {r["param"]: float(r["importance"]) for r in rows if r["local_search"] == "on"}
    assert on_rows == pytest.approx(result.values)
    text = exported.files["summary.md"].read_text().split("## Hyperparameter importance")[1]
    assert "| parameter | local search (8 trials) | frozen permutation (control) (7 trials) |" in text
    assert "- topk-off-synthetic-seed0 (off): skipped, 1 sampled parameter(s) that vary" in text


def test_importance_skips_a_study_with_few_trials(studies):
    on = next(s for s in studies if s.tags[tags.LOCAL_SEARCH] == "on")
    small = RecordedStudy(on.key, on.tags, on.trials[:3], on.space)
    assert importance.study_importance(small, "best_val_loss").skipped == "3 finished trial(s), fewer than 4"


def test_new_files_are_logged_on_the_export_run(exported, store):
    from mlflow.tracking import MlflowClient

    uri, _ = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(SWEEP)
    (run,) = client.search_runs([exp.experiment_id], f"tags.`{tags.ROLE}` = '{tags.EXPORT}'")
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"trials.csv", "paired.csv", "importance.csv", "paired_test_loss.png", "paired_test_loss.svg"} <= logged
    assert logged == set(exported.files)


# ---------------------------------------------------------------- the answer's wording


def _reduction(factor, low, high, *, censored=False, at=5):
    return reduction.Reduction(
        q=1.08,
        at=at,
        n_on=at,
        n_off=None if censored else int(factor * at),
        n_off_max=40,
        factor=None if censored else factor,
        low=low,
        high=high,
        censored=censored,
    )


def _curve(values):
    values = np.asarray(values, dtype=float)
    n = np.arange(1, values.size + 1)
    return budget.Curve(n, values, values, values, n * 1.0, np.zeros(values.size), budget.WITH_REPLACEMENT, n.size)


KEY = sweep.ReductionKey("test_loss", "synthetic", "equal", "topk", "random", "on")
FALLING = np.linspace(1.3, 1.0, 24)  # a monotone curve (lower loss is better)


def _answer(reduction, off_curve=FALLING, pairs=()):
    curves = {KEY: _curve(FALLING), KEY._replace(arm="off"): _curve(off_curve)}
    return answer.headline_answer({KEY: [reduction]}, curves, list(pairs), "test_loss")


def test_an_interval_containing_one_reads_no_detectable_difference():
    text, (line,) = _answer(_reduction(2.0, 0.8, 5.0))
    assert "Top-k on synthetic shows no detectable difference in the tuning budget" in text
    assert "(reduction 2x [90% interval 0.8, 5])" in text and "fewer trials" not in text
    assert line.startswith("Top-k (synthetic): no detectable difference in budget (reduction 2x [90% interval 0.8, 5])")
    # a censored factor is a claim too: the same rule
    text, _ = _answer(_reduction(None, 0.9, np.inf, censored=True))
    assert "no detectable difference" in text and "> 8x (censored) [90% interval 0.9, ∞]" in text


def test_an_interval_excluding_one_gives_the_factor():
    text, (line,) = _answer(_reduction(3.2, 1.4, 8.0))
    assert (
        "Top-k on synthetic needs 3.2x [90% interval 1.4, 8] fewer trials to reach test_loss 1.08, what 5 trials"
        in text
    )
    assert line.startswith("Top-k (synthetic): budget reduction 3.2x [90% interval 1.4, 8] to reach test_loss 1.08")
    assert "no detectable difference" not in text
    text, _ = _answer(_reduction(None, 2.0, np.inf, censored=True))
    assert "needs > 8x (censored) [90% interval 2, ∞] fewer trials" in text
    text, _ = _answer(_reduction(0.4, 0.2, 0.8))  # excludes 1 from below: more trials, said plainly
    assert "needs 2.5x more trials, not fewer" in text
    text, _ = _answer(_reduction(2.0, np.nan, np.nan))  # running best: no interval, no claim
    assert "without an interval (running best): not a claim" in text


def test_the_answer_names_a_curve_that_is_not_monotone_and_gives_the_paired_difference():
    bumpy = np.r_[np.linspace(1.3, 1.05, 7), np.full(17, 1.2)]  # worse after n = 7
    pair = paired.PairedDiff(
        ("topk", "synthetic", "equal", "random"), "on", "off", "test_loss", [("0", n) for n in range(4)],
        np.array([-0.03, -0.02, -0.04, 0.01]), 0, 0, -0.02, -0.03, -0.01, -0.025, -0.04, 0.01, 0.75, 0.4, 0.9,
    )  # fmt: skip
    text, (line,) = _answer(_reduction(3.2, 1.4, 8.0), off_curve=bumpy, pairs=[pair])
    assert "the no local search curve is not monotone in n: it gets worse after n = 7" in text
    assert "with a paired on − off test_loss difference of -0.02 [90% interval -0.03, -0.01]" in text
    assert "(local search better in 3/4 pairs)" in text
    assert line.endswith(
        "; paired on − off test_loss: mean -0.02 [90% interval -0.03, -0.01], local search better in 3/4 pairs"
    )
    assert answer.worse_after(_curve(FALLING), higher=False) is None
    learned = paired.PairedDiff(
        ("topk", "synthetic", "equal", "random"), "on", "frozen", "test_loss", [("0", n) for n in range(4)],
        np.array([0.01, -0.02, 0.0, 0.01]), 0, 0, 0.0, -0.01, 0.01, 0.005, -0.02, 0.01, 0.5, 0.9, 0.9,
    )  # fmt: skip
    text, (line,) = _answer(_reduction(3.2, 1.4, 8.0), off_curve=bumpy, pairs=[pair, learned])
    assert "; learning the permutation (on − frozen): 0 [90% interval -0.01, 0.01] (no detectable difference)" in text
    assert line.endswith("; on − frozen: 0 [90% interval -0.01, 0.01] (no detectable difference)")


def test_the_headline_target_stays_out_of_the_flat_tail():
    assert [answer.headline_at(n) for n in (1, 4, 7, 8, 19, 20, 24, 500)] == [1, 1, 1, 2, 2, 5, 5, 5]


def test_a_pair_whose_trials_were_not_sampled_alike_is_counted(studies):
    """Pairing promises trial n's seed and shared sampled values alike in both arms; a pair that breaks it is
    counted (n_mismatched) rather than silently compared."""
    on, off = (next(s for s in studies if s.tags[tags.LOCAL_SEARCH] == arm) for arm in ("on", "off"))
    group = ("topk", "synthetic", "equal", "random")
    p = paired.compare(group, "on", [on], "off", [off], "test_loss", resamples=10, seed=0, level=0.9)
    assert (p.n, p.n_mismatched) == (N, 0)
    drifted = [RecordedTrial(t.index, t.status, t.metrics, dict(t.params), finished=t.finished) for t in off.trials]
    drifted[2].params["train.lr"] = "0.5"
    drifted[4].params["train.seed"] = "7"
    other = RecordedStudy(off.key, off.tags, drifted, off.space)
    p = paired.compare(group, "on", [on], "off", [other], "test_loss", resamples=10, seed=0, level=0.9)
    assert (p.n, p.n_mismatched) == (N, 2)


def test_dose_response_points_give_the_known_paired_differences_and_phase_medians(store, tmp_path):
    from moetune.report import dose_response

    uri, _ = store
    read = sweep.read_sweep(MlflowTracking(uri, experiment=SWEEP))
    rows = {r.comparison: r for r in dose_response.points(read, "test_loss", resamples=200)}
    assert set(rows) == {"on - off", "on - frozen", "frozen - off"}
    on_off = rows["on - off"]
    assert on_off.n_pairs == N and on_off.mean == pytest.approx(D_ON.mean())
    assert on_off.perm_steps == pytest.approx(np.median(100.0 * np.array(E_PERM)))
    assert on_off.perm_shift == pytest.approx(np.median(0.01 * (np.arange(N) + 1)))
    assert on_off.reduction_at == answer.headline_at(N) and math.isfinite(on_off.reduction)
    keep = np.arange(N) != FAILED_FROZEN
    assert rows["on - frozen"].n_pairs == N - 1
    assert rows["on - frozen"].mean == pytest.approx((D_ON - D_FROZEN)[keep].mean())
    dose_response.write_csv(tmp_path / "points.csv", list(rows.values()))
    dose_response.write_figure(tmp_path / "dose.png", list(rows.values()))
    with (tmp_path / "points.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3
    assert (tmp_path / "dose.png").stat().st_size > 10_000


def test_the_paired_words_say_no_detectable_difference_when_the_interval_contains_zero(store):
    uri, _ = store
    read = sweep.read_sweep(MlflowTracking(uri, experiment=SWEEP))
    by_arm = {s.tags[tags.LOCAL_SEARCH]: [s] for s in read.studies}
    group = ("topk", "synthetic", "equal", "random")

    def words(arm):
        p = paired.compare(group, arm, by_arm[arm], "off", by_arm["off"], "test_loss", resamples=500, seed=0, level=0.9)
        return p, answer._paired_text(p, "test_loss")[1]

    p, text = words("frozen")  # differences of both signs around +0.003
    assert p.mean_low <= 0 <= p.mean_high and "no detectable difference" in text
    p, text = words("on")  # all but two differences negative: the interval excludes 0
    assert p.mean_high < 0 and "no detectable difference" not in text
