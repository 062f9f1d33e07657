"""Recipes and ``reproduce``: every shipped recipe loads, validates and builds; the step-size schedules
equal their papers' (and torch's MultiStepLR); ``reproduce`` runs end to end on tiny data, labels a
budget-limited row as such, resumes, re-scores without re-computing, and never gives a recipe's name
to a run with other settings."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

import pyro_vae.recipes as recipes_module
from pyro_vae.cli import reproduce_main, train_main
from pyro_vae.config import TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.models import build_vae_from_config
from pyro_vae.recipes import FREE_SETTINGS, Recipe, differences, get_recipe, recipes
from pyro_vae.recipes.reproduce import ROW_FILE, format_rows, make_row, reproduce
from pyro_vae.runs import read_results

from conftest import ROOT, make_idx_root, run_cli

PAPERS = {"vae-static-mnist": 89.9, "iwae-mnist": 84.78, "vamp-mnist": 85.57, "ladder-mnist": 81.74}
FAMILIES = ("family-vae", "family-iwae5", "family-vamp", "family-ladder")


# ------------------------------------------------------------------------------------------------
# the shipped recipes


def test_the_shipped_recipes_are_the_papers_and_the_families():
    known = recipes()
    assert set(PAPERS) | set(FAMILIES) <= set(known)
    for name, reference in PAPERS.items():
        r = known[name]
        assert r.reference == reference and not r.family
        assert r.k == 5000 and r.split == "test" and r.checkpoint in ("best", "last")
        for key in ("paper", "table", "data", "architecture", "optimiser", "objective", "differs"):
            assert r.source[key].strip(), (name, key)
    for name in FAMILIES:
        assert known[name].family and known[name].settings["dataset"] == "mnist"  # dynamically binarized


@pytest.mark.parametrize("name", sorted(recipes()))
def test_every_recipe_validates_builds_and_loads_as_a_settings_file(name):
    r = get_recipe(name)
    config = r.config()
    assert config.epochs == r.epochs
    # the file itself is a --config settings file: its recipe block is ignored there
    d = TrainConfig().to_dict()
    d.update(json.loads((ROOT / "pyro_vae" / "recipes" / f"{name}.json").read_text()))
    assert TrainConfig.from_dict(d).validate() == config
    classes = 10 if config.model in ("m2", "cvae") else None  # MNIST's labels
    vae = build_vae_from_config((1, 28, 28), config, classes=classes)
    assert sum(p.numel() for p in vae.parameters()) > 0
    assert differences(config, r) == []


def test_the_static_mnist_vae_is_784_400_40():
    vae = build_vae_from_config((1, 28, 28), get_recipe("vae-static-mnist").config())
    # encoder 784-400 and two 400-40 heads; decoder 40-400-784 (weights and biases), counted by hand
    expected = (784 * 400 + 400) + 2 * (400 * 40 + 40) + (40 * 400 + 400) + (400 * 784 + 784)
    assert sum(p.numel() for p in vae.parameters()) == expected


def test_iwae_schedule_is_the_papers_3_to_the_i_stages():
    config = get_recipe("iwae-mnist").config()
    stages = [(3**i, 1e-3 * 10 ** (-i / 7)) for i in range(8)]
    assert sum(n for n, _ in stages) == config.epochs == 3280
    epoch = 0
    for length, lr in stages:
        for e in range(epoch, epoch + length):
            assert math.isclose(config.lr_at(e), lr, rel_tol=1e-12), e
        epoch += length


@pytest.mark.parametrize("name", ["vae-static-mnist", "iwae-mnist"])
def test_lr_at_equals_torch_multisteplr(name):
    config = get_recipe(name).config()
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(config.lr_milestones), gamma=config.lr_gamma)
    for epoch in range(min(config.epochs, 1200)):
        assert math.isclose(config.lr_at(epoch), opt.param_groups[0]["lr"], rel_tol=1e-9), epoch
        opt.step()
        sched.step()


def test_training_uses_the_scheduled_step_size(tmp_path, tiny_data):
    from pyro_vae import load_run, train

    config = TrainConfig(
        epochs=3,
        batch_size=32,
        z_dim=3,
        hidden=(16,),
        lr=0.01,
        lr_milestones=(1, 2),
        lr_gamma=0.5,
        progress=False,
        out=str(tmp_path / "run"),
    )
    run = train(config, data=tiny_data).run_dir
    _, _, state = load_run(run)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01 * 0.25, rel=1e-12)


@pytest.mark.parametrize(
    "settings,message",
    [
        (dict(lr_milestones=(5, 3)), "`lr_milestones` must be increasing epochs"),
        (dict(lr_milestones=(3, 3)), "`lr_milestones` must be increasing epochs"),
        (dict(lr_milestones=(0,)), "`lr_milestones` must be one or more positive integers"),
        (dict(lr_milestones=()), "`lr_milestones` must be one or more positive integers"),
        (dict(lr_gamma=0.0), "`lr_gamma` must be a finite number > 0"),
        (dict(lr_gamma=math.nan), "`lr_gamma` must be a finite number > 0"),
        (dict(lr_milestones=(2,), cuda_graphs=True), "`lr_milestones` cannot change the step size"),
    ],
)
def test_bad_schedules_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**settings).validate()


def test_only_free_settings_may_differ():
    r = get_recipe("vae-static-mnist")
    free = r.config(device="cpu", time_limit=5.0, keep_checkpoints=1, log_every=7, data_dir="/elsewhere")
    assert differences(free, r) == []
    from dataclasses import replace

    changed = replace(r.config(), lr=1e-4, hidden=(500,))
    assert differences(changed, r) == ["hidden [500] (recipe: [400])", "lr 0.0001 (recipe: 0.001)"]
    with pytest.raises(ConfigError, match="recipe vae-static-mnist fixes lr"):
        r.config(lr=1e-3)
    assert "epochs" not in FREE_SETTINGS and "seed" not in FREE_SETTINGS


# ------------------------------------------------------------------------------------------------
# a row's arithmetic


def _result(mean=91.25, se=0.25, epoch=7, k=5000):
    return {
        "nll": {str(k): {"mean": mean, "se": se}},
        "num_points": 10000,
        "epoch": epoch,
        "checkpoint": "/x/checkpoints/best.pt",
        "device": "cpu",
        "nll_seconds": 60.0,
        "elbo": {"mc": {"seconds": 3.0}, "analytic": {"seconds": 2.0}},
    }


def test_row_arithmetic_and_labels():
    r = get_recipe("vae-static-mnist")
    full = make_row(r, _result(), epochs_run=500, train_seconds=3600.0, run_dir="x")
    assert full.difference == pytest.approx(91.25 - 89.9, abs=1e-12)
    assert full.se == 0.25 and full.k == 5000 and full.full and full.status == "full recipe"
    assert full.eval_seconds == 65.0 and full.scored_epoch == 7 and full.checkpoint == "best.pt"
    short = make_row(r, _result(mean=88.0), epochs_run=12, train_seconds=60.0, run_dir="x")
    assert not short.full and short.status == "budget-limited" and short.difference == pytest.approx(-1.9)
    text = format_rows([full, short])
    lines = text.splitlines()
    assert "+1.35" in lines[1] and "500/500" in lines[1] and "full recipe" in lines[1]
    assert "budget-limited (12 of 500 epochs): not a reproduction" in lines[2] and "-1.90" in lines[2]
    family = make_row(get_recipe("family-vae"), _result(), epochs_run=3, train_seconds=1.0, run_dir="x")
    assert family.reference is None and family.difference is None


def _accuracy_result(mean=0.9, se=0.003):
    return {**_result(k=100), "accuracy": {"mean": mean, "se": se}}


def test_an_accuracy_row_is_in_percent_beside_the_papers_accuracy():
    r = get_recipe("m2-mnist-600")
    assert r.metric == "accuracy" and r.reference == 95.06 and r.k == 100
    row = make_row(r, _accuracy_result(), epochs_run=50, train_seconds=1.0, run_dir="x")
    assert row.metric == "accuracy" and row.value == pytest.approx(90.0) and row.se == pytest.approx(0.3)
    assert row.difference == pytest.approx(90.0 - 95.06)
    line = format_rows([row]).splitlines()[1]
    assert "90.00 %" in line and "-5.06" in line and "full recipe" in line
    nll_row = make_row(get_recipe("vae-static-mnist"), _result(), epochs_run=500, train_seconds=1.0, run_dir="x")
    assert nll_row.metric == "nll" and "91.25 nats" in format_rows([nll_row])


def test_a_series_name_runs_every_label_count_in_order():
    from pyro_vae.recipes import expand_names

    assert expand_names("m2-mnist") == ["m2-mnist-100", "m2-mnist-600", "m2-mnist-1000", "m2-mnist-3000"]
    assert expand_names("m2-mnist-600") == ["m2-mnist-600"]
    assert expand_names("families") == [r.name for r in recipes().values() if r.family]
    for name in ("m2-mnist-6", "nothing"):  # only whole parts before a "-" make a series
        with pytest.raises(ConfigError, match="unknown recipe"):
            expand_names(name)


def test_every_m2_recipe_is_its_label_count_with_the_papers_figure():
    papers = {100: 88.03, 600: 95.06, 1000: 96.40, 3000: 96.08}  # Kingma et al. 2014, Table 1: 100 - error
    for n, accuracy in papers.items():
        r = get_recipe(f"m2-mnist-{n}")
        config = r.config()
        assert config.model == "m2" and config.labels == n and config.validation == 10000
        assert r.reference == accuracy and r.checkpoint == "best" and r.split == "test"


# ------------------------------------------------------------------------------------------------
# reproduce end to end on tiny data


TINY_SETTINGS = {"dataset": "mnist", "hidden": [16], "z_dim": 3, "batch_size": 16, "epochs": 2, "log_every": 3}


def _tiny_recipe(epochs=2, checkpoint="last", **more) -> Recipe:
    source = {
        "title": "tiny",
        "paper": "p",
        "table": "t",
        "reference": 60.0,
        "data": "d",
        "architecture": "a",
        "optimiser": "o",
        "objective": "e",
        "differs": "-",
        "protocol": {"k": 50, "split": "test", "checkpoint": checkpoint},
    }
    return Recipe("tiny", {**TINY_SETTINGS, "epochs": epochs, **more}, source)


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """Register a tiny recipe beside the shipped ones; the data are a fabricated MNIST."""
    made = {}

    def use(recipe: Recipe) -> Path:
        made["tiny"] = recipe
        return root

    real = recipes()
    monkeypatch.setattr(recipes_module, "recipes", lambda: {**real, **made})
    root = make_idx_root(tmp_path / "data")
    return use


def call(argv, capsys):
    return run_cli(reproduce_main, argv, capsys)


def test_reproduce_trains_scores_and_writes_one_row(tiny, tmp_path, capsys):
    root = tiny(_tiny_recipe())
    out = tmp_path / "run"
    argv = ["tiny", "--data-dir", str(root), "--no-download", "--out", str(out), "--no-progress"]
    code, stdout, err = call(argv, capsys)
    assert code == 0, err
    row = json.loads((out / ROW_FILE).read_text())["row"]
    (entry,) = read_results(out / "eval.json")
    assert row["value"] == entry["nll"]["50"]["mean"] and row["se"] == entry["nll"]["50"]["se"]
    assert row["difference"] == pytest.approx(row["value"] - 60.0, abs=1e-12)
    assert row["epochs_run"] == row["epochs_recipe"] == 2 and row["status"] == "full recipe"
    assert row["scored_epoch"] == 2 and row["checkpoint"] == "last.pt" and row["num_points"] == 40
    assert row["device"] == "cpu" and row["train_seconds"] > 0
    assert "tiny" in stdout and "full recipe" in stdout and "not a reproduction" not in stdout
    # running it again only re-scores, and reuses the stored evaluation
    code, stdout, err = call(argv, capsys)
    assert code == 0, err
    assert "reusing the K = 50 evaluation" in stdout
    assert json.loads((out / ROW_FILE).read_text())["row"]["value"] == row["value"]
    assert len(read_results(out / "eval.json")) == 1


def test_a_budget_limited_row_says_so_and_resume_continues_it(tiny, tmp_path, capsys):
    root = tiny(_tiny_recipe(epochs=1000))
    out = tmp_path / "run"
    argv = ["tiny", "--data-dir", str(root), "--no-download", "--out", str(out), "--no-progress", "--minutes", "0.0001"]
    code, stdout, err = call(argv, capsys)
    assert code == 0, err
    assert "budget-limited (1 of 1000 epochs): not a reproduction" in stdout
    row = json.loads((out / ROW_FILE).read_text())["row"]
    assert row["status"] == "budget-limited" and row["epochs_run"] == 1
    code, stdout, err = call(argv, capsys)
    assert code == 0, err
    assert "after 1 of 1000 epochs: resuming for 0.0001 minutes" in stdout
    assert "budget-limited (2 of 1000 epochs)" in stdout
    assert json.loads((out / ROW_FILE).read_text())["row"]["scored_epoch"] == 2
    assert len(read_results(out / "eval.json")) == 2  # each checkpoint scored once


def test_an_accuracy_recipe_scores_the_classifier_the_validation_accuracy_chose(tiny, tmp_path):
    settings = dict(model="m2", labels=20, validation=30, hidden=[16], classifier_weight=10.0)
    recipe = _tiny_recipe(epochs=3, checkpoint="best", **settings)
    recipe.source["protocol"] = {"metric": "accuracy", "k": 5, "split": "test", "checkpoint": "best"}
    recipe.source["reference"] = 50.0
    root = tiny(recipe)
    out = tmp_path / "run"
    row = reproduce("tiny", data_dir=str(root), download=False, out=out, progress=False, say=lambda s: None)
    metrics = list(csv.DictReader(open(out / "metrics.csv")))
    best = max(metrics, key=lambda r: float(r["val_accuracy"]))  # the first epoch of the highest, as best.pt keeps
    assert row.checkpoint == "best.pt" and row.scored_epoch == int(best["epoch"])
    # the test accuracy of the chosen epoch, as the run logged it, in percent
    assert row.metric == "accuracy" and row.value == pytest.approx(100 * float(best["test_accuracy"]), abs=1e-9)
    assert row.difference == pytest.approx(row.value - 50.0) and row.num_points == 40
    (entry,) = read_results(out / "eval.json")
    assert "5" in entry["nll"] and entry["accuracy"]["mean"] == pytest.approx(row.value / 100)


def test_best_checkpoint_protocol_scores_the_validation_choice(tiny, tmp_path):
    root = tiny(_tiny_recipe(epochs=3, checkpoint="best", validation=30))
    row = reproduce(
        "tiny", data_dir=str(root), download=False, out=tmp_path / "run", progress=False, say=lambda s: None
    )
    metrics = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    best_epoch = min(metrics, key=lambda r: float(r["val_loss"]))["epoch"]
    assert row.checkpoint == "best.pt" and row.scored_epoch == int(best_epoch)


def test_a_run_with_other_settings_is_not_labelled_as_the_recipe(tiny, tmp_path, capsys):
    root = tiny(_tiny_recipe())
    settings = tmp_path / "tiny.json"
    settings.write_text(json.dumps({"recipe": {"name": "tiny"}, **TINY_SETTINGS}))
    common = ["--config", str(settings), "--data-dir", str(root), "--no-download", "--no-progress"]
    assert train_main([*common, "--lr", "0.01", "--out", str(tmp_path / "other")]) == 0
    # free settings (how often it logs, how many checkpoints it keeps) do not count
    assert train_main([*common, "--keep-checkpoints", "1", "--log-every", "5", "--out", str(tmp_path / "same")]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in (tmp_path / "other").rglob("*"))
    code, _, err = call(["tiny", "--out", str(tmp_path / "other"), "--no-train"], capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "was not trained with recipe tiny (lr 0.01 (recipe: 0.001))" in err
    assert sorted(p.name for p in (tmp_path / "other").rglob("*")) == before
    code, _, err = call(["tiny", "--out", str(tmp_path / "same"), "--no-train", "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "same" / ROW_FILE).read_text())["row"]["status"] == "full recipe"


def test_default_folder_and_list(tiny, tmp_path, monkeypatch, capsys):
    root = tiny(_tiny_recipe(epochs=1))
    monkeypatch.chdir(tmp_path)
    code, _, err = call(["tiny", "--data-dir", str(root), "--no-download", "--no-progress"], capsys)
    assert code == 0, err
    assert (tmp_path / "runs" / "reproduce-tiny" / ROW_FILE).is_file()
    code, stdout, _ = call(["--list"], capsys)
    assert code == 0
    for name, reference in PAPERS.items():
        assert any(line.startswith(name) and f"{reference:.2f}" in line for line in stdout.splitlines())
    for name in FAMILIES:
        assert any(line.startswith(name) and "model family" in line for line in stdout.splitlines())


@pytest.mark.parametrize(
    "argv,message",
    [
        (["nope"], "unknown recipe 'nope'; choose one of"),
        ([], "name a recipe"),
        (["tiny", "--minutes", "0"], "--minutes must be a finite number of minutes > 0, got 0.0"),
        (["tiny", "--minutes", "-3"], "--minutes must be a finite number of minutes > 0"),
        (["tiny", "--minutes", "nan"], "--minutes must be a finite number of minutes > 0"),
        (["tiny", "--minutes", "inf"], "--minutes must be a finite number of minutes > 0"),
        (["tiny", "family-vae", "--out", "OUT"], "--out names one run folder"),
        (["tiny", "--out", "OUT", "--no-train"], "holds no run to score; drop --no-train"),
        (["tiny", "--out", "FILE"], "is a file, not a folder"),
        (["tiny", "--table", "OUT"], "--table"),
        (["tiny", "--device", "tpu"], "invalid choice"),
    ],
)
def test_bad_reproduce_input_is_one_line_and_leaves_nothing(tiny, tmp_path, capsys, argv, message):
    root = tiny(_tiny_recipe())
    (tmp_path / "FILE").write_text("x")
    (tmp_path / "OUT").mkdir()
    argv = [str(tmp_path / a) if a in ("OUT", "FILE") else a for a in argv]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    code, _, err = call([*argv, "--data-dir", str(root), "--no-download", "--no-progress"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and message in lines[0], err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def _good_source() -> dict:
    return json.loads((recipes_module.RECIPE_DIR / "family-vae.json").read_text())


BAD_RECIPES = {
    "not-json": (b"{ this is not json", "cannot be read as JSON (JSONDecodeError)"),
    "not-utf8": (b"\xff\xfe{}", "cannot be read as JSON (UnicodeDecodeError)"),
    "deep": (b"[" * 100_000, "cannot be read as JSON (RecursionError)"),
    "huge": (b" " * (2**20 + 1) + b"{}", "far beyond a settings file"),
    "a-list": (b"[1, 2]", "has no recipe block"),
    "no-block": (json.dumps({"z_dim": 2}).encode(), "has no recipe block"),
    "missing-keys": (json.dumps({"recipe": {"title": "x"}}).encode(), "lacks paper, table, data"),
    "k-zero": (lambda d: d["recipe"]["protocol"].update(k=0), "protocol k must be a number of importance samples"),
    "k-text": (lambda d: d["recipe"]["protocol"].update(k="5000"), "protocol k must be"),
    "bad-split": (lambda d: d["recipe"]["protocol"].update(split="everything"), "protocol split must be one of"),
    "bad-checkpoint": (lambda d: d["recipe"]["protocol"].update(checkpoint="first"), "checkpoint one of best, last"),
    "bad-reference": (lambda d: d["recipe"].update(reference="89.9"), "reference must be a number of nats or null"),
    "bad-metric": (lambda d: d["recipe"]["protocol"].update(metric="bpd"), "protocol metric must be one of nll"),
    "accuracy-without-labels": (
        lambda d: d["recipe"]["protocol"].update(metric="accuracy"),
        "protocol metric accuracy scores a classifier: the settings need model m2",
    ),
    "bad-setting": (lambda d: d.update(lr=-1), "`lr` must be a finite number > 0"),
    "unknown-setting": (lambda d: d.update(learning_rate=0.1), "unknown settings ['learning_rate']"),
}


@pytest.fixture
def recipe_folder(tmp_path, monkeypatch):
    """The shipped recipes beside one bad file of each kind."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    for path in recipes_module.RECIPE_DIR.glob("*.json"):
        (folder / path.name).write_bytes(path.read_bytes())
    for name, (content, _) in BAD_RECIPES.items():
        if callable(content):
            d = _good_source()
            content(d)
            content = json.dumps(d).encode()
        (folder / f"{name}.json").write_bytes(content)
    monkeypatch.setattr(recipes_module, "RECIPE_DIR", folder)
    recipes_module._load.cache_clear()
    yield folder
    recipes_module._load.cache_clear()


def test_bad_recipe_files_are_named_and_the_good_ones_still_listed(recipe_folder, capsys):
    from pyro_vae.recipes import recipe_problems

    assert sorted(recipes()) == sorted(p.stem for p in ROOT.joinpath("pyro_vae", "recipes").glob("*.json"))
    problems = recipe_problems()
    assert sorted(problems) == sorted(BAD_RECIPES)
    for name, (_, message) in BAD_RECIPES.items():
        assert problems[name].startswith(f"recipe file {recipe_folder / name}.json") and message in problems[name], name
    code, out, err = call(["--list"], capsys)
    assert code == 0 and err == ""
    assert "vae-static-mnist" in out and "family-vae" in out
    assert out.count("skipped: recipe file") == len(BAD_RECIPES)


@pytest.mark.parametrize("name", list(BAD_RECIPES))
def test_reproducing_a_bad_recipe_is_one_line_before_any_work(recipe_folder, tmp_path, capsys, name):
    code, _, err = call([name, "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert code == 2 and err.startswith(f"error: recipe file {recipe_folder / name}.json") and err.count("\n") == 1
    assert BAD_RECIPES[name][1].replace("`lr`", "--lr") in err
    assert not (tmp_path / "run").exists()
