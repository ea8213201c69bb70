"""The report (``moetune export``) against a real MLflow sqlite store laid out as moetune.tracking.tags says."""

import csv
import subprocess
import sys
import time

import numpy as np
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from moetune import contract
from moetune.cli.main import main as moetune_main
from moetune.errors import ConfigError
from moetune.report import analysis, budget, export, figures, reduction, sweep, tables
from moetune.report import answer as answer_module
from moetune.report.sweep import Group
from moetune.tracking import tags
from moetune.tracking.mlflow_store import MlflowTracking

SWEEP = "sweep-a"
N_RANDOM, N_TPE = 8, 5
RESAMPLES = 200


def _make_study(client, exp_id, *, gate, ls, sampler, seed, trials, dataset="synthetic", weights=None):
    """trials: list of dicts (metrics) in trial-index order; a dict with "failed" makes a FAILED run."""
    key = f"{gate}/{ls}/{dataset}/{sampler}/{seed}" + (f"/{weights}" if weights else "")
    study_tags = {
        tags.ROLE: tags.STUDY,
        tags.GATE: gate,
        tags.LOCAL_SEARCH: ls,
        tags.DATASET: dataset,
        tags.SAMPLER: sampler,
        tags.SEED: str(seed),
        tags.STUDY_KEY: key,
        tags.SWEEP: SWEEP,
        tags.HEADLINE_METRIC: "test_loss",
    }
    if weights:
        study_tags[tags.TASK_WEIGHTS] = weights
    parent = client.create_run(exp_id, run_name=key, tags=study_tags)
    pid = parent.info.run_id
    # create children in reverse order: the exporter must order them by TRIAL_INDEX, not by creation
    for i in reversed(range(len(trials))):
        m = dict(trials[i])
        failed = m.pop("failed", False)
        killed = m.pop("killed", False)
        child = client.create_run(
            exp_id,
            tags={
                tags.ROLE: tags.TRIAL,
                "mlflow.parentRunId": pid,
                tags.TRIAL_INDEX: str(i),
                tags.TRIAL_ID: f"{key}/{i}",
            },
        )
        now = int(time.time() * 1000)
        client.log_batch(child.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in m.items()])
        client.set_terminated(child.info.run_id, "KILLED" if killed else "FAILED" if failed else "FINISHED")
    client.set_terminated(pid, "FINISHED")


def _random_trials(rng, n, shift, failed_at=None):
    out = []
    for i in range(n):
        val = rng.uniform(0.3, 0.6) - shift
        if i == failed_at:
            out.append({"failed": True, contract.VAL_LOSS: 9.9, contract.WALL_SECONDS: 50.0})
            continue
        out.append(
            {
                "best_val_loss": val,
                "test_loss": val + rng.normal(0, 0.02),
                "best_val_watch_auc": 1 - val,
                "test_watch_auc": 1 - val + rng.normal(0, 0.02),
                contract.WALL_SECONDS: rng.uniform(5, 15),
                contract.ACTIVE_EXPERTS: 1.0 + i % 2,
                contract.TRAIN_SAMPLES_PER_SECOND: 1000.0 * (i + 1),
            }
        )
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment(SWEEP, artifact_location=(root / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    data = {}
    for gate in ("topk", "comet"):
        for ls, shift in (("on", 0.1), ("off", 0.0), ("warmup", 0.05)):
            if ls == "warmup" and gate == "comet":
                continue  # the control arm for one gate only
            draws = np.random.default_rng(1) if ls == "warmup" else rng  # keeps the other studies' draws
            trials = _random_trials(draws, N_RANDOM, shift, failed_at=3 if (gate, ls) == ("topk", "off") else None)
            # an interrupted trial (KILLED) is left out: not a failure, a re-run redoes it
            killed = [{"killed": True, contract.WALL_SECONDS: 1.0}] if (gate, ls) == ("comet", "on") else []
            _make_study(client, exp_id, gate=gate, ls=ls, sampler="random", seed=0, trials=trials + killed)
            data[(gate, ls, "random")] = [trials]
    for ls, shift in (("on", 0.1), ("off", 0.0)):
        seeds = [_random_trials(rng, N_TPE, shift) for _ in range(2)]
        for seed, trials in enumerate(seeds):
            _make_study(client, exp_id, gate="hash", ls=ls, sampler="tpe", seed=seed, trials=trials)
        data[("hash", ls, "tpe")] = seeds
    # a second sweep with a study that has only one finished trial
    bad = client.create_experiment("sweep-bad", artifact_location=(root / "artifacts-bad").as_uri())
    _make_study(
        client,
        bad,
        gate="topk",
        ls="on",
        sampler="random",
        seed=0,
        trials=[
            {"best_val_loss": 0.4, "test_loss": 0.41, contract.WALL_SECONDS: 1.0},
            {"failed": True, contract.WALL_SECONDS: 1.0},
        ],
    )
    return uri, root, data


def _trials(metrics_list, metric):
    nan = float("nan")
    ok = [not m.get("failed", False) for m in metrics_list]
    return budget.Trials(
        val=[m["best_val_loss"] if f else nan for m, f in zip(metrics_list, ok, strict=True)],
        test=[m[metric] if f else nan for m, f in zip(metrics_list, ok, strict=True)],
        failed=[not f for f in ok],
        seconds=[m[contract.WALL_SECONDS] for m in metrics_list],
    )


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def exported(store, tmp_path_factory):
    uri, _, _ = store
    out = tmp_path_factory.mktemp("out") / "export"
    result = export.export_sweep(MlflowTracking(uri, experiment=SWEEP), out, resamples=RESAMPLES, seed=0)
    return result.files, out


def test_files_written(exported):
    files, out = exported
    expected = {"curves.csv", "reductions.csv", "top_trials.csv", "summary.md", "budget_curves.html"} | {
        f"budget_{m}{x}.{ext}"
        for m in ("test_loss", "test_watch_auc")
        for x in ("", "_compute")
        for ext in ("png", "svg")
    }
    expected |= {"trials.csv", "paired.csv", "importance.csv"}
    expected |= {f"paired_{m}.{ext}" for m in ("test_loss", "test_watch_auc") for ext in ("png", "svg")}
    # anytime curves of the headline metric; this store records no epochs_run, so only against seconds
    expected |= {"anytime.csv", "anytime_seconds_test_loss.png", "anytime_seconds_test_loss.svg"}
    assert set(files) == expected
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)  # no temp folder left behind
    png = files["budget_test_loss.png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    svg = files["budget_test_watch_auc.svg"].read_text()
    assert "<svg" in svg and "tuning budget (trials)" in svg and "Top-k, local search" in svg
    assert "Top-k, uniform warm-up (dense start)" in svg and "Top-k, no local search" in svg
    assert "test_watch_auc (higher is better)" in svg
    compute = files["budget_test_loss_compute.svg"].read_text()
    assert "tuning budget (compute seconds)" in compute and "tuning budget (trials)" not in compute
    assert "Top-k, local search" in compute
    assert files["budget_test_watch_auc_compute.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = files["budget_curves.html"].read_text()
    assert len(html) > 1_000_000  # plotly.js embedded: viewable offline
    assert 'src="https://cdn' not in html
    assert html.count("Plotly.newPlot") == 4  # per metric: against trials and against compute
    assert "tuning budget (trials)" in html and "tuning budget (compute seconds)" in html


def test_csv_matches_budget_module(exported, store):
    files, _ = exported
    _, _, data = store
    rows = _read_csv(files["curves.csv"])
    assert list(rows[0].keys()) == tables.CSV_COLUMNS
    # 2 metrics x (5 random curves of 8 budgets + 2 tpe curves of 5 budgets)
    assert len(rows) == 2 * (5 * N_RANDOM + 2 * N_TPE)
    for metric in ("test_loss", "test_watch_auc"):
        for gate in ("topk", "comet"):
            for ls in ("on", "off"):
                got = [r for r in rows if (r["metric"], r["gate"], r["local_search"]) == (metric, gate, ls)]
                assert [int(r["budget"]) for r in got] == list(range(1, N_RANDOM + 1))
                assert {r["estimator"] for r in got} == {"expected_max_with_replacement"}
                assert got[0]["study"] == f"{gate}/{ls}/synthetic/random/0"
                t = _trials(data[(gate, ls, "random")][0], metric)
                want = budget.budget_curve(
                    t.val, t.test, failed=t.failed, seconds=t.seconds, resamples=RESAMPLES, seed=0
                )
                np.testing.assert_allclose([float(r["value"]) for r in got], want.value, rtol=1e-12)
                np.testing.assert_allclose([float(r["low"]) for r in got], want.low, rtol=1e-12)
                np.testing.assert_allclose([float(r["high"]) for r in got], want.high, rtol=1e-12)
                np.testing.assert_allclose(
                    [float(r["compute_seconds"]) for r in got], np.arange(1, N_RANDOM + 1) * np.mean(t.seconds)
                )
                assert got[0]["higher_is_better"] == str(metric.endswith("auc"))
        tpe = [r for r in rows if (r["metric"], r["gate"], r["local_search"]) == (metric, "hash", "on")]
        assert {r["estimator"] for r in tpe} == {"running_best"} and tpe[0]["n_studies"] == "2"
        want = budget.running_best_curve([_trials(s, metric) for s in data[("hash", "on", "tpe")]])
        np.testing.assert_allclose([float(r["value"]) for r in tpe], want.value, rtol=1e-12)
    failed = [r for r in rows if (r["gate"], r["local_search"]) == ("topk", "off")]
    assert {r["n_failed"] for r in failed} == {"1"} and {r["n_trials"] for r in failed} == {str(N_RANDOM)}
    assert float(failed[0]["p_no_model"]) == pytest.approx(1 / N_RANDOM)


def _reduction_rows(text, metric, gate_label, arm="local search"):
    """The reduction table's rows under one gate's heading, as lists of cells."""
    section = text.split(f"## {metric} ")[1].split("\n## ")[0]
    section = section.split(f"### {gate_label} — synthetic")[1].split("\n### ")[0]
    table = section.split("| arm | target (arm's curve at n) | q | n_arm | n_off | reduction [90% interval] |")[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()[2:] if line.startswith("|")]
    return [r[1:] for r in rows if r[0] == arm]


def test_summary_puts_the_gates_of_a_setting_side_by_side(exported, store):
    """Per setting and metric, one row per gate and arm: quality at 1 and 16 trials, the best, the experts
    active per sample (mean) and training samples/s (median) over the finished trials."""
    files, _ = exported
    _, _, data = store
    text = files["summary.md"].read_text()
    section = text.split("## test_loss (lower is better)")[1].split("\n## ")[0]
    table = section.split("### Gates side by side — synthetic")[1].split("\n### ")[0]
    assert "| gate | trials (failed) | n = 1 | n = 16 | best | active experts | training samples/s |" in table
    rows = {r[0]: r[1:] for r in ([c.strip() for c in line.strip("|").split("|")] for line in table.splitlines())}
    assert {
        "Top-k, local search",
        "Top-k, no local search",
        "COMET, local search",
        "Hash, local search (TPE, running best)",
    } <= set(rows)
    trials = data[("topk", "off", "random")][0]
    finished = [t for t in trials if not t.get("failed")]
    t = _trials(trials, "test_loss")
    got = rows["Top-k, no local search"]
    assert got[0] == f"{N_RANDOM} (1)"
    assert got[1] == f"{budget.expected_best_curve(t.val, t.test, failed=t.failed)[0]:.4g}"  # n = 1
    assert got[2] == "—"  # n = 16 > N = 8
    assert got[4] == f"{np.mean([f[contract.ACTIVE_EXPERTS] for f in finished]):.4g}"
    assert got[5] == f"{np.median([f[contract.TRAIN_SAMPLES_PER_SECOND] for f in finished]):,.0f}"


def test_summary(exported, store):
    files, _ = exported
    _, _, data = store
    text = files["summary.md"].read_text()
    assert "## test_loss (lower is better)" in text and "## test_watch_auc (higher is better)" in text
    assert "### Top-k — synthetic" in text and "### COMET — synthetic" in text
    t_on = _trials(data[("topk", "on", "random")][0], "test_loss")
    t_off = _trials(data[("topk", "off", "random")][0], "test_loss")
    on_curve = budget.expected_best_curve(t_on.val, t_on.test)
    panel = text.split("### Top-k — synthetic")[1]
    row = next(line for line in panel.splitlines() if line.startswith("| Top-k, local search |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == f"{budget.expected_best_curve(t_on.val, t_on.test, replacement=False)[-1]:.4g}"  # best
    assert cells[4] == f"{on_curve[0]:.4g}"  # n = 1
    assert cells[5] == "—" and cells[6] == "—"  # n = 10, 100 > N = 8
    rows = _reduction_rows(text, "test_loss", "Top-k")
    assert [r[0] for r in rows] == ["n = 1", "n = 2", "n = 5"]  # n = 10 > N = 8
    for row, n in zip(rows, (1, 2, 5), strict=True):
        red = reduction.reduction_factor(t_on, t_off, at=n, resamples=RESAMPLES, seed=0)
        assert row[1] == f"{red.q:.4g}" and row[2] == str(red.n_on)
        if red.censored:
            assert row[3] == f"> {N_RANDOM}" and row[4].startswith(f"> {red.lower_bound:.3g}x (censored")
        else:
            assert row[3] == str(red.n_off)
            assert row[4].startswith(
                f"{red.factor:.3g}x [90% interval {reduction._fmt_bound(red.low)}, {reduction._fmt_bound(red.high)}"
            )
            assert row[4].endswith("; censored above]" if np.isinf(red.high) else "]")
    t_warm = _trials(data[("topk", "warmup", "random")][0], "test_loss")
    warm_rows = _reduction_rows(text, "test_loss", "Top-k", arm="uniform warm-up (dense start)")
    assert [r[0] for r in warm_rows] == ["n = 1", "n = 2", "n = 5"]
    for row, n in zip(warm_rows, (1, 2, 5), strict=True):
        red = reduction.reduction_factor(t_warm, t_off, at=n, resamples=RESAMPLES, seed=0)
        assert row[1] == f"{red.q:.4g}" and row[2] == str(red.n_on)
    assert _reduction_rows(text, "test_loss", "COMET", arm="uniform warm-up (dense start)") == []
    # TPE: from the running-best curves, no interval; censored here since off never reaches on's n=1
    tpe = [
        budget.running_best_curve([_trials(s, "test_loss") for s in data[("hash", ls, "tpe")]]) for ls in ("on", "off")
    ]
    red = reduction.reduction_factor(*tpe)
    assert red.censored
    row = _reduction_rows(text, "test_loss", "Hash")[0]
    assert row[:4] == ["n = 1", f"{red.q:.4g}", str(red.n_on), f"> {N_TPE}"]
    assert row[4].startswith(f"> {red.lower_bound:.3g}x (censored")
    assert "Top-k, local search (TPE, running best)" not in text  # hash gate is not Top-k
    assert "Hash, local search (TPE, running best)" in text


def test_reductions_csv_matches_budget_module(exported, store):
    files, _ = exported
    _, _, data = store
    rows = _read_csv(files["reductions.csv"])
    assert list(rows[0].keys()) == tables.REDUCTION_COLUMNS
    # 2 metrics x (topk on + warmup, comet on random; hash on tpe) x targets n = 1, 2, 5 (10 > N_on)
    assert len(rows) == 2 * 4 * 3
    assert {r["arm"] for r in rows if r["gate"] == "topk"} == {"on", "warmup"}
    rows = [r for r in rows if r["arm"] == "on"]
    n_censored = 0
    for metric in ("test_loss", "test_watch_auc"):
        up = metric.endswith("auc")
        for gate, sampler in (("topk", "random"), ("comet", "random"), ("hash", "tpe")):
            got = [r for r in rows if (r["metric"], r["gate"], r["sampler"]) == (metric, gate, sampler)]
            assert [int(r["at_n"]) for r in got] == [1, 2, 5] and {r["dataset"] for r in got} == {"synthetic"}
            if sampler == "random":
                on, off = (_trials(data[(gate, ls, "random")][0], metric) for ls in ("on", "off"))
            else:
                on, off = (
                    budget.running_best_curve([_trials(s, metric) for s in data[("hash", ls, "tpe")]])
                    for ls in ("on", "off")
                )
            for r in got:
                want = reduction.reduction_factor(
                    on, off, at=int(r["at_n"]), test_higher_is_better=up, resamples=RESAMPLES, seed=0
                )
                assert float(r["q"]) == want.q and int(r["n_arm"]) == want.n_on
                assert r["censored"] == str(want.censored or bool(np.isposinf(want.high)))
                if want.censored:  # lower bounds: n_off = N_off, factor = N_off / n_on
                    n_censored += 1
                    assert int(r["n_off"]) == want.n_off_max and float(r["factor"]) == want.lower_bound
                else:
                    assert int(r["n_off"]) == want.n_off and float(r["factor"]) == want.factor
                if sampler == "random":
                    assert (float(r["low"]), float(r["high"])) == (want.low, want.high)
                    assert float(r["low"]) <= float(r["high"])
                else:
                    assert r["low"] == r["high"] == ""  # running best: no interval
    assert n_censored >= 1  # the TPE hash rows at n = 1 at least


def test_compute_axis_of_interactive_figure(exported, store):
    uri, _, _ = store
    studies = sweep.read_sweep(MlflowTracking(uri, experiment=SWEEP), selection="best_val_loss").studies
    results = analysis.group_curves(studies, ["test_loss"], "best_val_loss", 0, 0, 0.9)
    fig = figures.render_plotly(figures.describe(results, "test_loss", 0.9, x="compute"))
    lines = {t.name: t for t in fig.data if t.name}
    assert len(lines) == 7
    for r in results:
        trace = lines[analysis.label(r.gate, r.local_search, r.sampler)]
        np.testing.assert_allclose(trace.x, r.curve.compute_seconds)
        np.testing.assert_allclose(trace.y, r.curve.value)
    assert fig.layout.xaxis.title.text == "tuning budget (compute seconds)" and fig.layout.xaxis.type == "log"


def test_artifacts_logged_on_export_run(exported, store):
    files, _ = exported
    uri, _, _ = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(SWEEP)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tags.ROLE}` = 'export'")
    assert len(runs) >= 1
    names = {a.path for a in client.list_artifacts(runs[-1].info.run_id)}
    assert names == set(files)


def test_metric_and_filter(store, tmp_path):
    uri, _, _ = store
    files = export.export_sweep(
        MlflowTracking(uri, experiment=SWEEP),
        tmp_path / "o",
        metric="test_watch_auc",
        filters=["gate=topk"],
        resamples=20,
        log_export=False,
    ).files
    rows = _read_csv(files["curves.csv"])
    assert {r["metric"] for r in rows} == {"test_watch_auc"} and {r["gate"] for r in rows} == {"topk"}
    assert "budget_test_loss.png" not in files


@pytest.mark.parametrize(
    "kwargs, experiment, message",
    [
        ({}, "nope", "unknown experiment 'nope'; available: Default, sweep-a, sweep-bad"),
        ({}, "sweep-bad", "study 'topk/on/synthetic/random/0' has 1 finished trial(s)"),
        ({"metric": "test_rating_mse"}, SWEEP, "recorded test metrics: test_loss, test_watch_auc"),
        ({"filters": ["gate=softmax"]}, SWEEP, "no study matches gate=softmax; values of gate: comet, hash, topk"),
        ({"filters": ["gate"]}, SWEEP, "is not KEY=VALUE"),
    ],
)
def test_bad_input_writes_nothing(store, tmp_path, kwargs, experiment, message):
    uri, _, _ = store
    out = tmp_path / "sweeps" / "x" / "export"
    with pytest.raises(ConfigError) as e:
        export.export_sweep(MlflowTracking(uri, experiment=experiment), out, resamples=10, **kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "sweeps").exists()


def test_missing_store_is_not_created(tmp_path):
    db = tmp_path / "none.db"
    with pytest.raises(ConfigError, match="no MLflow store"):
        export.export_sweep(MlflowTracking(f"sqlite:///{db}", experiment=SWEEP), tmp_path / "o")
    assert not db.exists() and not (tmp_path / "o").exists()


def test_main_prints_paths(store, tmp_path, capsys):
    uri, _, _ = store
    rc = moetune_main(
        [
            "export",
            "--experiment",
            SWEEP,
            "--tracking-uri",
            uri,
            "--out",
            str(tmp_path / "cli"),
            "--metric",
            "test_loss",
            "--filter",
            "gate=comet",
            "--resamples",
            "20",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "cli" / "curves.csv") in out and "budget_test_loss.png" in out


def test_cli_unknown_experiment(store, tmp_path):
    uri, _, _ = store
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "moetune.cli.main",
            "export",
            "--experiment",
            "nope",
            "--tracking-uri",
            uri,
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: unknown experiment 'nope'; available: Default, sweep-a, sweep-bad"]
    assert not (tmp_path / "o").exists()


def test_moetune_export_subcommand(store, tmp_path, capsys):
    uri, _, _ = store
    rc = moetune_main(
        [
            "export",
            "--experiment",
            SWEEP,
            "--tracking-uri",
            uri,
            "--out",
            str(tmp_path / "c"),
            "--metric",
            "test_loss",
            "--filter",
            "gate=topk",
            "--resamples",
            "20",
        ]
    )
    assert rc == 0
    assert str(tmp_path / "c" / "reductions.csv") in capsys.readouterr().out
    assert (tmp_path / "c" / "budget_test_loss_compute.svg").is_file()
    rows = _read_csv(tmp_path / "c" / "reductions.csv")
    assert {(r["gate"], r["metric"]) for r in rows} == {("topk", "test_loss")}
    with pytest.raises(SystemExit) as e:
        moetune_main(["export", "--help"])
    assert e.value.code == 0 and "usage: moetune export" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: COMMAND"),
        (["bogus", "--experiment", SWEEP], "invalid choice: 'bogus' (choose from 'export', 'list')"),
    ],
)
def test_moetune_without_a_known_subcommand_exits_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        moetune_main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: moetune [-h] COMMAND")
    assert message in err


def test_summary_opens_with_the_answer(exported, store):
    files, _ = exported
    _, _, data = store
    lines = files["summary.md"].read_text().splitlines()
    assert lines[0] == f"# Budget vs quality — {SWEEP}"
    answer = lines[2]
    assert answer.startswith("**Answer.** With permutation local search, ") and answer.endswith(".")
    # the headline is test_loss (the selection loss's test twin) at n = 2: the largest of 1, 2, 5 <= N_on / 4
    assert answer_module.headline_at(N_RANDOM) == 2
    t_on, t_off = (_trials(data[("topk", ls, "random")][0], "test_loss") for ls in ("on", "off"))
    red = reduction.reduction_factor(t_on, t_off, at=2, resamples=RESAMPLES, seed=0)
    target = f"to reach test_loss {red.q:.4g}, what 2 trials reach with local search"
    if red.low <= 1 <= red.high:
        assert (
            f"Top-k on synthetic shows no detectable difference in the tuning budget {target} (reduction {red})"
            in answer
        )
    else:
        assert f"Top-k on synthetic needs {red} fewer trials {target}" in answer
    assert "COMET on synthetic" in answer and "Hash on synthetic, tpe" in answer
    # TPE's running best has no interval: its factor is given, but not as a claim
    assert "without an interval (running best): not a claim" in answer.split("Hash on synthetic, tpe")[1]
    # the paired difference on − off stands beside each factor
    paired = _read_csv(files["paired.csv"])
    row = next(r for r in paired if (r["gate"], r["comparison"], r["metric"]) == ("topk", "on − off", "test_loss"))
    mean, low, high = (float(row[k]) for k in ("mean", "mean_low", "mean_high"))
    assert f"with a paired on − off test_loss difference of {mean:.3g} [90% interval {low:.3g}, {high:.3g}]" in answer
    assert answer.count("paired on − off test_loss difference") == 3  # Top-k, COMET, Hash


def test_reduction_text_marks_censoring():
    red = reduction.Reduction(
        q=0.5, at=10, n_on=2, n_off=None, n_off_max=64, factor=None, low=8.0, high=np.inf, censored=True
    )
    assert str(red) == "> 32x (censored) [90% interval 8, ∞]"  # a censored factor is a claim: with its interval
    red.low = red.high = np.nan
    assert str(red) == "> 32x (censored)"
    red = reduction.Reduction(
        q=0.5, at=10, n_on=2, n_off=8, n_off_max=64, factor=4.0, low=1.5, high=np.inf, censored=False
    )
    assert str(red) == "4x [90% interval 1.5, ∞; censored above]"
    red.high = 9.0
    assert str(red) == "4x [90% interval 1.5, 9]"


def test_top_trials_are_the_best_five_percent_by_validation(exported, store):
    files, _ = exported
    rows = _read_csv(files["top_trials.csv"])
    assert list(rows[0].keys()) == tables.TOP_COLUMNS
    row = next(r for r in rows if (r["gate"], r["local_search"], r["metric"]) == ("topk", "off", "test_watch_auc"))
    _, _, data = store
    t = _trials(data[("topk", "off", "random")][0], "test_watch_auc")
    ok = ~t.failed
    assert int(row["n_finished"]) == ok.sum() == N_RANDOM - 1 and int(row["n_top"]) == 1
    assert float(row["mean"]) == t.test[ok][np.argmin(t.val[ok])] and row["stderr"] == ""
    # 41 finished trials: the top ceil(2.05) = 3 by validation loss, mean and standard error of their test scores
    rng = np.random.default_rng(3)
    val, test = rng.uniform(size=41), rng.uniform(size=41)
    trials = budget.Trials(np.append(val, np.nan), np.append(test, np.nan))  # plus one failed trial
    result = analysis.GroupCurve(
        Group("topk", "on", "synthetic", "equal", "random"), "test_loss", [], None, trials, 0.0
    )
    (top,) = analysis.top_trials([result], val_up=False)
    best3 = test[np.argsort(val)[:3]]
    assert (top.n_finished, top.n_top) == (41, 3)
    assert top.mean == pytest.approx(best3.mean()) and top.stderr == pytest.approx(best3.std(ddof=1) / np.sqrt(3))


@pytest.mark.slow  # two whole exports
def test_a_new_export_replaces_the_previous_export_run(store, tmp_path):
    uri, _, _ = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(SWEEP)
    for out in ("first", "second"):
        files = export.export_sweep(
            MlflowTracking(uri, experiment=SWEEP), tmp_path / out, metric="test_loss", resamples=10
        ).files
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tags.ROLE}` = 'export'")
    assert len(runs) == 1
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} == set(files)


def test_unwritable_output_folder_is_one_line(store, tmp_path):
    uri, _, _ = store
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"cannot write the export to .*; pass --out <writable folder>"):
        export.export_sweep(MlflowTracking(uri, experiment=SWEEP), blocker / "export", resamples=10)


def _curve_of(gate, ls, sampler, setting, seed):
    """A GroupCurve built straight from numbers (no store): random search pools, TPE keeps its one seed."""
    rng = np.random.default_rng(seed)
    t = budget.Trials(rng.uniform(size=6), rng.uniform(size=6), seconds=np.full(6, 2.0))
    if sampler == "random":
        curve, trials = budget.budget_curve(t.val, t.test, seconds=t.seconds, resamples=20), t
    else:
        curve, trials = budget.running_best_curve([t]), [t]
    return analysis.GroupCurve(Group(gate, ls, setting[0], setting[1], sampler), "test_loss", [], curve, trials, 0.0)


def test_one_figure_description_drives_both_renderers(tmp_path):
    """A 2 x 2 grid with one empty panel: both renderers draw the same panels, series, colors and dashes."""
    equal, weighted = ("synthetic", "equal"), ("synthetic", "0.1_0.9")
    curves = [
        _curve_of("topk", "on", "random", equal, 0),
        _curve_of("topk", "off", "random", equal, 1),
        _curve_of("topk", "on", "tpe", equal, 2),
        _curve_of("hash", "warmup", "random", equal, 3),
        _curve_of("topk", "off", "random", weighted, 4),
    ]
    spec = figures.describe(curves, "test_loss", 0.9, x="trials")
    assert spec.stem == "budget_test_loss" and spec.x_label == "tuning budget (trials)"
    assert spec.y_label == "test_loss (lower is better)"
    assert spec.rows == ["synthetic, task weights 0.1, 0.9", "synthetic"] and spec.n_cols == 2  # sorted settings
    assert [(p.row, p.col, p.title) for p in spec.panels] == [
        (0, 0, "Hash — synthetic, task weights 0.1, 0.9"),
        (0, 1, "Top-k — synthetic, task weights 0.1, 0.9"),
        (1, 0, "Hash — synthetic"),
        (1, 1, "Top-k — synthetic"),
    ]
    topk = spec.panels[3].series
    assert [(s.label, s.color, s.dashed) for s in topk] == [
        ("Top-k, local search", figures.ARM_COLORS["on"], False),
        ("Top-k, no local search", figures.ARM_COLORS["off"], False),
        ("Top-k, local search (TPE, running best)", figures.ARM_COLORS["on"], True),
    ]
    assert spec.panels[0].series == []
    assert spec.title.startswith("test_loss: budget (trials) vs quality\n")

    fig = figures.render_plotly(spec)
    assert [a.text for a in fig.layout.annotations] == [p.title for p in spec.panels]
    named = [t for t in fig.data if t.name]
    assert [t.name for t in named] == [  # one legend for the figure: each name says its row
        "Top-k, no local search (synthetic, task weights 0.1, 0.9)",
        "Hash, uniform warm-up (dense start) (synthetic)",
        "Top-k, local search (synthetic)",
        "Top-k, no local search (synthetic)",
        "Top-k, local search (TPE, running best) (synthetic)",
    ]
    assert [t.line.dash for t in named] == ["solid", "solid", "solid", "solid", "dash"]
    assert named[2].line.color == "rgba(31,119,180,1)" and named[3].line.color == "rgba(255,127,14,1)"
    bands = [t for t in fig.data if t.fill == "tonexty"]
    assert len(bands) == 5 and bands[1].fillcolor == "rgba(44,160,44,0.15)"
    assert "n=%{customdata[3]}" in named[0].hovertemplate and "%{customdata[2]:.0f} s" in named[0].hovertemplate
    np.testing.assert_allclose(np.array(named[2].customdata)[:, 3], curves[0].curve.budgets)
    np.testing.assert_allclose(named[2].x, curves[0].curve.budgets)
    assert all(fig.layout[f"xaxis{k}"].type == "log" for k in ("", "2", "3", "4"))
    assert [fig.layout[f"yaxis{k}"].matches for k in ("", "2", "3", "4")] == [None, "y", None, "y3"]  # per setting

    figures.render_matplotlib(spec, tmp_path / "f.png", tmp_path / "f.svg")
    svg = (tmp_path / "f.svg").read_text()
    for text in [p.title for p in spec.panels] + [s.label for p in spec.panels for s in p.series]:
        assert text in svg, text
    assert svg.count("tuning budget (trials)") == 4 and svg.count("test_loss (lower is better)") == 2


def test_more_gates_than_a_row_holds_wrap_onto_rows_of_their_setting(tmp_path):
    """Four gates on one setting: two rows of three columns, the last cell a filler both renderers leave blank."""
    setting = ("synthetic", "equal")
    gates = ["expert_choice", "hash", "soft_moe", "topk"]
    curves = [_curve_of(gate, "off", "random", setting, i) for i, gate in enumerate(gates)]
    spec = figures.describe(curves, "test_loss", 0.9, x="trials")
    assert spec.n_cols == figures.MAX_COLS == 3 and spec.rows == ["synthetic", "synthetic"]
    assert [(p.row, p.col, p.title) for p in spec.panels] == [
        (0, 0, "Expert Choice — synthetic"),
        (0, 1, "Hash — synthetic"),
        (0, 2, "Soft MoE — synthetic"),
        (1, 0, "Top-k — synthetic"),
        (1, 1, ""),
        (1, 2, ""),
    ]
    assert [len(p.series) for p in spec.panels] == [1, 1, 1, 1, 0, 0]

    fig = figures.render_plotly(spec)
    assert [a.text for a in fig.layout.annotations] == [p.title for p in spec.panels if p.title]
    # the setting's four panels share one y axis across its two rows; the fillers are hidden
    assert [fig.layout[f"yaxis{k}"].matches for k in ("", "2", "3", "4")] == [None, "y", "y", "y"]
    assert fig.layout.xaxis5.visible is False and fig.layout.yaxis6.visible is False
    assert [t.name for t in fig.data if t.name] == [  # one setting: names carry no row
        "Expert Choice, no local search",
        "Hash, no local search",
        "Soft MoE, no local search",
        "Top-k, no local search",
    ]
    figures.render_matplotlib(spec, tmp_path / "f.png", tmp_path / "f.svg")
    svg = (tmp_path / "f.svg").read_text()
    assert svg.count("tuning budget (trials)") == 4  # the fillers draw no axes
    assert svg.count("test_loss (lower is better)") == 2  # the first column of each row


def test_print_answer_names_the_folder_the_answer_and_where_to_browse(tmp_path, capsys):
    done = export.Export(
        {"summary.md": tmp_path / "summary.md"},
        "No gate has both arms.",
        [],
        "test_loss",
        "7",
        MlflowTracking("sqlite:///mlruns/mlflow.db", experiment="x").browse_hint("7"),
    )
    export.print_answer(done)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"export: {tmp_path.resolve()} (summary.md, curves, figures, budget_curves.html)"
    assert out[1] == "  No gate has both arms."
    assert out[2] == (
        "browse: mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --host 127.0.0.1 --port 5000, "
        "then open http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
    )
    done.lines = ["Top-k (synthetic): budget reduction 2x"]
    done.browse_hint = MlflowTracking("http://mlflow:5000/", experiment="x").browse_hint("7")
    export.print_answer(done)
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == [
        "  Top-k (synthetic): budget reduction 2x",
        "browse: http://mlflow:5000/#/experiments/7/runs?workflowType=machine_learning",
    ]


# ---------------------------------------------------------------- multi-fidelity: anytime curves against compute


def _scheduled_store(root):
    """topk on/off, asha/none, seeds 0 and 1, three trials each with known validation, test and epochs."""
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("sweep-asha", artifact_location=(root / "artifacts").as_uri())
    # (val, test, epochs_run) per trial; asha's on and off of seed 0 stop trial 1 at different epochs
    data = {
        ("on", "asha", 0): [(0.5, 0.6, 9), (0.4, 0.5, 1), (0.45, 0.4, 3)],
        ("on", "asha", 1): [(0.3, 0.7, 9), (0.6, 0.6, 1), (0.2, 0.5, 1)],
        ("off", "asha", 0): [(0.6, 0.8, 9), (0.5, 0.7, 3), (0.7, 0.6, 1)],
        ("off", "asha", 1): [(0.6, 0.9, 9), (0.7, 0.6, 1), (0.5, 0.8, 3)],
        ("on", "none", 0): [(0.5, 0.6, 9), (0.4, 0.5, 9), (0.45, 0.4, 9)],
        ("on", "none", 1): [(0.3, 0.7, 9), (0.6, 0.6, 9), (0.2, 0.5, 9)],
        ("off", "none", 0): [(0.6, 0.8, 9), (0.5, 0.7, 9), (0.7, 0.6, 9)],
        ("off", "none", 1): [(0.6, 0.9, 9), (0.7, 0.6, 9), (0.5, 0.8, 9)],
    }
    for (ls, scheduler, seed), rows in data.items():
        trials = [
            {"best_val_loss": v, "test_loss": t, contract.EPOCHS_RUN: e, contract.WALL_SECONDS: 2.0 * e}
            for v, t, e in rows
        ]
        _make_study(client, exp_id, gate="topk", ls=ls, sampler="random", seed=seed, trials=trials)
        key = f"topk/{ls}/synthetic/random/{seed}"
        for run in client.search_runs([exp_id], filter_string=f"tags.`{tags.STUDY_KEY}` = '{key}'"):
            if (
                scheduler != "none"
                and run.data.tags.get(tags.ROLE) == tags.STUDY
                and tags.SCHEDULER not in run.data.tags
            ):
                client.set_tag(run.info.run_id, tags.SCHEDULER, scheduler)
                client.set_tag(run.info.run_id, tags.STUDY_KEY, key + "/asha")
                break
    return uri


def test_the_export_draws_anytime_curves_against_compute_per_arm_and_scheduler(tmp_path):
    uri = _scheduled_store(tmp_path)
    out = tmp_path / "export"
    files = export.export_sweep(MlflowTracking(uri, experiment="sweep-asha"), out, resamples=RESAMPLES).files
    for name in ("anytime.csv", "anytime_test_loss.png", "anytime_test_loss.svg", "anytime_seconds_test_loss.png"):
        assert name in files and files[name].stat().st_size > 0
    rows = _read_csv(files["anytime.csv"])
    assert list(rows[0]) == [
        "gate", "arm", "dataset", "task_weights", "sampler", "scheduler", "metric", "cost_axis", "cost", "mean",
        "low", "high", "repeats", "estimator",
    ]  # fmt: skip
    exact = [r for r in rows if r["estimator"] != "mean_over_repeats"]
    rows = [r for r in rows if r["estimator"] == "mean_over_repeats"]
    # full-length random search's exact curve beside the bands, for each arm and axis (never for asha's):
    # on's pooled six trials of 9 epochs (18 s) each: budget n costs 9n epochs; at n = 1 the expected test
    # loss of one trial drawn at random, (.6 + .5 + .4 + .7 + .6 + .5) / 6 = .55
    assert {(r["arm"], r["scheduler"], r["cost_axis"]) for r in exact} == {
        (arm, "none", axis) for arm in ("on", "off") for axis in ("epochs", "seconds")
    }
    on_epochs = [r for r in exact if r["arm"] == "on" and r["cost_axis"] == "epochs"]
    assert (float(on_epochs[0]["cost"]), float(on_epochs[0]["mean"])) == (9.0, pytest.approx(0.55))
    assert all(float(r["cost"]) % 9 == 0 for r in on_epochs) and on_epochs[0]["repeats"] == "2"
    on_seconds = [r for r in exact if r["arm"] == "on" and r["cost_axis"] == "seconds"]
    assert [float(r["cost"]) for r in on_seconds] == [2 * float(r["cost"]) for r in on_epochs]
    on_asha = [(float(r["cost"]), float(r["mean"])) for r in rows if r["arm"] == "on" and r["scheduler"] == "asha"
               and r["cost_axis"] == "epochs"]  # fmt: skip
    # by hand: seed 0 after trials 0, 1, 2 -> costs 9, 10, 13, selected test .6, .5 (val .4), .5;
    # seed 1 -> costs 9, 10, 11, test .7, .7, .5 (val .2); grid 9 10 11 13 -> means .65 .6 .5 .5
    assert on_asha == [(9, pytest.approx(0.65)), (10, pytest.approx(0.6)), (11, pytest.approx(0.5)),
                       (13, pytest.approx(0.5))]  # fmt: skip
    assert {r["repeats"] for r in rows} == {"2"}
    assert {r["scheduler"] for r in rows} == {"asha", "none"}
    # the existing tables keep a scheduled group apart from full-length random search (sampler "random+asha")
    assert {r["sampler"] for r in _read_csv(files["paired.csv"])} == {"random", "random+asha"}
    summary = files["summary.md"].read_text()
    assert "## Budget against compute" in summary and "bootstrap 90% interval over repeats" in summary
    assert "full-length random search's exact budget curve" in summary
    # pairs of asha's on and off: seed 0 ran 9/9, 1/3, 3/1; seed 1 9/9, 1/1, 1/3 -> 3 of 6 differ
    assert "Top-k, synthetic, asha, on − off: 3 of 6 pairs ran to different `epochs_run`" in summary
    # on over off (asha, epochs): reference .25 x min(13, 11, 13, 13) = 2.75, but answers only from 9 -> 9:
    # on's mean there (.6 + .7) / 2 = .65; off's mean .85 .85 .8 .75 at 9 10 12 13 never reaches it:
    # censored, off's shortest total 13 / on's 9
    row = "| Top-k | synthetic | random | asha | epochs | local search | 9 | 0.65 | 9 | — | > 1.44x (censored) ["
    assert row in summary
    # on over off (none, epochs): reference .25 x 27 = 6.75: no answer either; seconds likewise
    assert "| Top-k | synthetic | random | asha vs none | epochs | local search |" in summary
