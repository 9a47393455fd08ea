"""The benchmark scripts' pure parts: sweep grids, bundle overrides, tables and the choice of a winner."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load("bench_accuracy")


def test_grid_expands_every_combination_in_order() -> None:
    combos = bench._grid('{"network": ["unet", "segnet"], "learning_rate": [0.001, 0.002], "max_epochs": 20}')
    assert combos == [
        {"network": "unet", "learning_rate": 0.001, "max_epochs": 20},
        {"network": "unet", "learning_rate": 0.002, "max_epochs": 20},
        {"network": "segnet", "learning_rate": 0.001, "max_epochs": 20},
        {"network": "segnet", "learning_rate": 0.002, "max_epochs": 20},
    ]
    assert bench._grid({"fill_holes": (False, True)}) == [{"fill_holes": False}, {"fill_holes": True}]
    # fire parses --grid '{"fill_holes": [false, true]}' itself, leaving the JSON words as strings
    assert bench._grid({"fill_holes": ["false", "true"], "init_weights": "null"}) == [
        {"fill_holes": False, "init_weights": None},
        {"fill_holes": True, "init_weights": None},
    ]


def test_grid_given_on_the_command_line_reaches_the_bundle_as_booleans() -> None:
    code = (
        "import fire, importlib.util, sys; "
        f"spec = importlib.util.spec_from_file_location('b', {str(ROOT / 'scripts' / 'bench_accuracy.py')!r}); "
        "b = importlib.util.module_from_spec(spec); spec.loader.exec_module(b); "
        "fire.Fire(lambda grid: print(b._overrides(b._grid(grid)[0])))"
    )
    grid = '{"keep_largest_component": [false], "tta_views": [4]}'
    out = subprocess.run([sys.executable, "-c", code, "--grid", grid], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['--keep_largest_component', 'False', '--tta_views', '4']"


def test_overrides_are_python_literals_the_bundle_cli_parses_back() -> None:
    args = bench._overrides({"fill_holes": False, "spatial_size": [320, 320], "network": "unet", "lr": 0.002})
    assert args == ["--fill_holes", "False", "--spatial_size", "[320, 320]", "--network", "unet", "--lr", "0.002"]
    # monai.bundle run parses its arguments with fire: "false" would arrive as a (truthy) string, "False" as False
    code = "import fire, json; fire.Fire(lambda **kw: print(json.dumps(kw, sort_keys=True)))"
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout
    assert out.strip() == '{"fill_holes": false, "lr": 0.002, "network": "unet", "spatial_size": [320, 320]}'
    assert bench._slug({"network": "unet", "spatial_size": [320, 320]}) == "network-unet_spatial_size-_320_320_"
    assert shlex.split(shlex.join(args)) == args


def test_a_record_command_gives_the_bundle_back_its_overrides_through_both_shell_splits() -> None:
    asked = bench._overrides({"loss_kwargs": {"batch_dice": False}, "seed": 0, "network": "a$b"})
    command = bench.run_command("brain_tumor", 0.0, 160, asked, {"max_epochs": 14})
    words = shlex.split(command)  # the user's shell, then bench_accuracy's own split of --overrides
    assert shlex.split(words[words.index("--overrides") + 1]) == asked
    assert json.loads(words[words.index("--pretrain") + 1]) == {"max_epochs": 14}
    assert (
        words[:9] == "python scripts/bench_accuracy.py run --tasks brain_tumor --minutes 0.0 --max_epochs 160".split()
    )
    plain = bench.run_command("ph2_melanoma", 0, None, ["--amp", "True"], {})
    assert plain == 'python scripts/bench_accuracy.py run --tasks ph2_melanoma --minutes 0 --overrides "--amp True"'


def _row(dice: float, pooled: float, empty_ok: int = 0) -> dict:
    return {
        "dice_mean": dice,
        "dice_median": dice,
        "dice_worst": dice - 0.2,
        "jaccard_mean": dice - 0.05,
        "pooled_dice": pooled,
        "pooled_jaccard": pooled - 0.05,
        "empty_truth_cases": 10,
        "empty_predicted_empty": empty_ok,
    }


def test_best_prefers_mean_dice_then_pooled_then_empty_cases() -> None:
    rows = [
        {"k": 1, **_row(0.90, 0.91)},
        {"k": 2, **_row(0.92, 0.90)},
        {"k": 3, **_row(0.92, 0.93, 2)},
        {"k": 4, **_row(0.92, 0.93, 9)},
    ]
    assert bench._best(rows)["k"] == 4
    table = bench._grid_table(rows, ["k"])
    assert table.splitlines()[0].endswith("| empty_predicted_empty |")
    assert "| 4 | 0.9200 |" in table and table.splitlines()[-1].endswith("| 9/10 |")


def test_speed_floor_measures_the_bare_training_step_and_leaves_results_alone(tmp_path: Path) -> None:
    """``bench_speed.py floor``: images/s of the bundle's own network/loss/optimizer step, fp32 and AMP, and the
    shortest possible epoch of the training split (n_train / images per second)."""

    sys.path.insert(0, str(ROOT / "scripts"))
    from lesiondata.synthetic import make_demo_dataset

    data = make_demo_dataset("ph2_melanoma", tmp_path / "data", n=10, seed=0)
    out = tmp_path / "floor.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_speed.py"), "floor", "--task", "ph2_melanoma"]
    cmd += ["--dataset_dir", str(data), "--steps", "1", "--update", "False", "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    figures = json.loads(out.read_text())
    train_items = [i for i in json.loads((data / "datalist.json").read_text())["training"] if i["fold"] != 0]
    assert figures["n_train"] == len(train_items) > 0
    for tag in ("fp32", "amp"):
        assert figures[f"{tag}_images_per_s"] > 0
        assert abs(figures[f"{tag}_floor_epoch_s"] - figures["n_train"] / figures[f"{tag}_images_per_s"]) < 0.01
    assert "max_speedup_fp32" not in figures  # --update False: the committed record is not read or written


def test_speed_baseline_dropout_is_plain_or_fast(tmp_path: Path) -> None:
    """The baseline trains with ``nn.Dropout`` (the seeds' way) or the bundles' ``FastDropout``; anything else
    stops before training, saying which values it takes. The record names the CPU it ran on."""
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_speed.py"), "baseline", "--task", "ph2_melanoma"]
    cmd += ["--dataset_dir", str(tmp_path), "--epochs", "1", "--seed", "0", "--out", str(tmp_path / "b.json")]
    result = subprocess.run([*cmd, "--dropout", "nope"], capture_output=True, text=True)
    assert result.returncode != 0 and "use plain (nn.Dropout" in result.stderr
    assert not (tmp_path / "b.json").exists()
    run = [sys.executable, str(ROOT / "scripts" / "bench_speed.py"), "run", "--baseline_dropout", "fast"]
    result = subprocess.run([*run, "--dataset_dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode != 0 and "use plain or plain,fast" in result.stderr  # the seeds' baseline comes first
    result = subprocess.run(
        [*run[:3], "--variants", "[1]", "--dataset_dir", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode != 0 and '--variants [1]: give JSON {"name": {"bundle_key": value}}' in result.stderr
    sys.path.insert(0, str(ROOT / "scripts"))
    from lesiondata.hardware import cpu_name

    assert isinstance(cpu_name(), str) and cpu_name()


def test_sweeps_add_up_and_a_point_run_again_replaces_its_row() -> None:
    old = [
        {"network": "unet", "epochs": 20, "dice_mean": 0.80, "commit": "a"},
        {"network": "segnet", "epochs": 20, "dice_mean": 0.70, "commit": "a"},
    ]
    new = [{"network": "unet", "spatial_size": [384, 384], "epochs": 20, "dice_mean": 0.85, "commit": "b"}]
    rows = bench._merge_rows(old, new, ["network", "spatial_size"])
    assert [r["dice_mean"] for r in rows] == [0.80, 0.70, 0.85]
    assert rows[0]["spatial_size"] == bench.DEFAULT  # not varied by the earlier sweep: the bundle's value then
    again = [{"network": "segnet", "spatial_size": bench.DEFAULT, "epochs": 20, "dice_mean": 0.72, "commit": "c"}]
    rows = bench._merge_rows(rows, again, ["network", "spatial_size"])
    assert sorted(r["dice_mean"] for r in rows) == [0.72, 0.80, 0.85]  # the segnet point was replaced
    longer = [{"network": "segnet", "spatial_size": bench.DEFAULT, "epochs": 40, "dice_mean": 0.75, "commit": "d"}]
    assert len(bench._merge_rows(rows, longer, ["network", "spatial_size"])) == 4  # other epochs: another point


def test_empty_case_separability_counts_the_cases_a_threshold_keeps() -> None:
    empty = _load("bench_empty_cases")
    rows = [{"truth_fraction": 0.0, **dict.fromkeys(empty.STATISTICS, v)} for v in (0.1, 0.2, 0.3, 0.9)]
    rows += [{"truth_fraction": 0.05, **dict.fromkeys(empty.STATISTICS, v)} for v in (0.25, 0.5, 0.8, 0.95)]
    table = empty.separability(rows)["pred_fraction"]
    # 90 % of 4 empties right needs all 4 below t, so t > 0.9: only 0.95 stays non-empty
    assert table["90%"] == {"non_empty_kept": 1, "threshold": 0.95}
    # 66 % (3 of 4) right: t just above 0.3 keeps 0.5, 0.8, 0.95
    assert table["66%"]["non_empty_kept"] == 3 and table["66%"]["threshold"] == 0.5
    assert table["median_empty"] == 0.25 and table["median_non_empty"] == 0.65


def test_empty_case_statistics_of_a_presence_network_add_its_head(tmp_path: Path) -> None:
    """With ``presence_head`` the table scores the head's probability, and the others come from the ungated network."""
    import torch

    from lesiondata.synthetic import make_demo_dataset

    empty = _load("bench_empty_cases")
    data = make_demo_dataset("trus_prostate", tmp_path / "data", n=8, seed=3)
    keys = {"presence_head": True, "spatial_size": [64, 64]}
    sys.path.insert(0, str(ROOT / "bundles" / "trus_prostate"))
    from scripts.networks import build_network

    net = build_network("unet", 1, 2, dropout=0.1, presence_head=True)
    torch.nn.init.zeros_(net.head.fc.weight)
    torch.nn.init.constant_(net.head.fc.bias, -20.0)  # the head calls every image empty
    (tmp_path / "run" / "models").mkdir(parents=True)
    torch.save(net.state_dict(), tmp_path / "run" / "models" / "model.pt")
    rows = empty.case_statistics("trus_prostate", tmp_path / "run", data, keys)
    assert rows and all(r[empty.PRESENCE] < 1e-6 for r in rows)
    # the gated output would have no foreground at all; the statistics see the segmentation network's own output
    assert any(r["max_probability"] > 1e-3 for r in rows)
    assert empty.PRESENCE in empty.separability(rows)


def test_a_sweep_row_holds_the_value_every_key_had_in_its_run() -> None:
    defaults = bench.bundle_defaults("ph2_melanoma", ["colour_aug", "amp"])
    got = bench._settings("ph2_melanoma", ["colour_aug", "amp", "seed", "not_a_key"], ["--seed", "1"])
    assert got == {**defaults, "seed": 1, "not_a_key": bench.DEFAULT}  # overrides parsed as the bundle reads them
    assert bench._settings("ph2_melanoma", ["spatial_size"], ["--spatial_size", "[384, 384]"]) == {
        "spatial_size": [384, 384]
    }
    # the brain recipe's first stage adds init_weights: the row says so rather than printing a scratch path
    assert bench._settings("brain_tumor", ["init_weights"], ["--init_weights", "/w/model.pt"]) == {
        "init_weights": bench.PRETRAINED
    }


def _fake_sweep_point(
    results: Path, work: Path, combo: dict, epochs: int, seed=bench.DEFAULT, run: Path | None = None
) -> None:
    """A sweep row and its run folder as ``bench_accuracy.py sweep`` leaves them (no training); ``run`` defaults to
    the folder name of sweeps from before folders named their epochs."""
    run = run or work / "sweep" / "ph2_melanoma" / bench._slug(combo)
    (run / "models").mkdir(parents=True)
    (run / "eval").mkdir()
    history = [
        {"epoch_seconds": 10.0, "precision": "fp32", "val_mean_iou": 0.5 + e / 1000, "val_mean_dice": 0.6}
        for e in range(epochs)
    ]
    (run / "models" / "history.json").write_text(json.dumps(history))
    scores = {"n": 2, "mean": 0.9, "median": 0.9, "worst": 0.85}
    cls = {"dice_nonempty": scores, "jaccard_nonempty": scores, "pooled_dice": 0.91, "pooled_jaccard": 0.83}
    cls |= {"empty_truth_cases": 0, "empty_predicted_empty": 0}
    (run / "eval" / "metrics_summary.json").write_text(json.dumps({"n_images": 2, "classes": {"1": cls}}))
    row = {
        **combo,
        "seed": seed,
        "epochs": epochs,
        "train_min": 20.0,
        "precision": "fp32",  # what amp resolved to, as a sweep records it
        "command": "python sweep",
        "commit": "c",
    }
    row |= bench._row({"classes": {"1": cls}})
    (results / "sweep_ph2_melanoma.json").write_text(json.dumps({"rows": [row], "hardware": "test cpu"}))


@pytest.fixture
def sweep_dirs(tmp_path: Path, monkeypatch) -> tuple[Path, Path, int]:
    """Empty results and work folders in place of the repository's, and the PH2 bundle's default epoch count."""
    results, work = tmp_path / "results", tmp_path / "work"
    results.mkdir()
    monkeypatch.setattr(bench, "RESULTS", results)
    monkeypatch.setattr(bench, "WORK", work)
    return results, work, bench.bundle_defaults("ph2_melanoma", ["max_epochs"])["max_epochs"]


def test_promote_takes_a_sweep_point_only_once_it_is_the_default_recipe(sweep_dirs) -> None:
    results, work, default_epochs = sweep_dirs

    _fake_sweep_point(results, work, {"colour_aug": 0.3}, default_epochs)  # not the default (0.0)
    with pytest.raises(SystemExit, match="tasks.json"):
        bench.promote("ph2_melanoma", '{"colour_aug": 0.3}')
    assert not (results / "accuracy_ph2_melanoma.json").exists()

    _fake_sweep_point(results, work, {"fill_holes": True}, default_epochs + 5)  # the default value, other epochs
    with pytest.raises(SystemExit, match="max_epochs"):
        bench.promote("ph2_melanoma", '{"fill_holes": true}')

    results.joinpath("sweep_ph2_melanoma.json").unlink()
    shutil.rmtree(work)
    _fake_sweep_point(results, work, {"fill_holes": True}, default_epochs, seed=1)  # another key not the default
    with pytest.raises(SystemExit, match="no single sweep row"):
        bench.promote("ph2_melanoma", '{"fill_holes": true}')

    results.joinpath("sweep_ph2_melanoma.json").unlink()
    shutil.rmtree(work)
    _fake_sweep_point(results, work, {"fill_holes": True}, default_epochs, seed=0)  # resolved, and the default
    bench.promote("ph2_melanoma", '{"fill_holes": true}')
    record = json.loads((results / "accuracy_ph2_melanoma.json").read_text())
    assert record["promoted_from"]["sweep_point"] == {"fill_holes": True} and record["overrides"] == []
    assert record["epochs"] == default_epochs and record["train_seconds"] == 1200.0 and record["commit"] == "c"
    assert record["checkpoint_epoch"] == default_epochs and record["summary"]["classes"]["1"]["pooled_dice"] == 0.91
    assert (work / "ph2_melanoma" / "models" / "history.json").is_file()  # where `evaluate`/`postprocess` look
    # what amp resolved to in training reaches the record and the model card
    assert record["precision"] == "fp32" and "test cpu, trained in fp32, commit `c`" in bench._card_section(
        "ph2_melanoma"
    )

    # the point run again at a later commit, beside its older row (from before a key the sweep now records): the
    # row of the run its folder holds is promoted
    sweep_file = results / "sweep_ph2_melanoma.json"
    recorded = json.loads(sweep_file.read_text())
    older = {**recorded["rows"][0], "colour_constancy_power": bench.DEFAULT, "commit": "old", "dice_mean": 0.95}
    recorded["rows"] = [{**recorded["rows"][0], "colour_constancy_power": 0, "commit": "new"}, older]
    sweep_file.write_text(json.dumps(recorded))
    run = work / "sweep" / "ph2_melanoma" / bench._slug({"fill_holes": True})
    (run / "record.json").write_text(json.dumps({**record, "commit": "new", "promoted_from": None}))
    bench.promote("ph2_melanoma", '{"fill_holes": true}')
    assert json.loads((results / "accuracy_ph2_melanoma.json").read_text())["commit"] == "new"

    # the point's folder holds another run than its only row (the row ran under another grid): refused, not mixed up
    current = {**recorded["rows"][0], "colour_constancy_power": 0, "commit": "newer"}
    sweep_file.write_text(json.dumps({**recorded, "rows": [current]}))
    with pytest.raises(SystemExit, match="names another run"):
        bench.promote("ph2_melanoma", '{"fill_holes": true}')
    # a row from before a key existed ran the template's value: not the default recipe once the bundle sets another
    # (PH2 keeps the largest component; the template does not)
    stale = {**current, "keep_largest_component": bench.DEFAULT, "commit": "new"}
    sweep_file.write_text(json.dumps({**recorded, "rows": [stale]}))
    with pytest.raises(SystemExit, match="no single sweep row"):
        bench.promote("ph2_melanoma", '{"fill_holes": true}')


def test_runs_of_one_point_at_two_epoch_counts_keep_their_own_folders(sweep_dirs) -> None:
    results, work, default_epochs = sweep_dirs
    point, rows = {"fill_holes": True}, []
    for epochs in (default_epochs + 5, default_epochs):
        folder = bench._run_dir("ph2_melanoma", point, epochs)
        _fake_sweep_point(results, work, point, epochs, seed=0, run=folder)
        rows += json.loads((results / "sweep_ph2_melanoma.json").read_text())["rows"]
    assert bench._run_dir("ph2_melanoma", point, 5) != bench._run_dir("ph2_melanoma", point, 6)
    (results / "sweep_ph2_melanoma.json").write_text(json.dumps({"rows": rows, "hardware": "test cpu"}))
    bench.promote("ph2_melanoma", '{"fill_holes": true}')  # two rows of the point: the default recipe's epochs
    record = json.loads((results / "accuracy_ph2_melanoma.json").read_text())
    assert record["epochs"] == default_epochs
    assert record["promoted_from"]["run_folder"].endswith(f"_{default_epochs}ep")


def test_grid_json_words_are_parsed_inside_dict_values_too() -> None:
    # fire hands `--grid '{"loss_kwargs": [{"batch_dice": false}]}'` over with the word false as a string
    assert bench._grid({"loss_kwargs": [{"batch_dice": "false"}], "amp": ["true"]}) == [
        {"loss_kwargs": {"batch_dice": False}, "amp": True}
    ]
    assert bench._grid({"spatial_size": [[384, 384]]}) == [{"spatial_size": [384, 384]}]


def test_a_recorded_grid_reads_as_the_json_one_types_and_runs_the_same_points() -> None:
    fire_made = {"loss_kwargs": [{"batch_dice": "false"}], "amp": ["true"], "init_weights": "null"}
    text = bench._grid_text(fire_made)
    assert text == '{"loss_kwargs": [{"batch_dice": false}], "amp": [true], "init_weights": [null]}'
    assert (
        bench._grid(text)
        == bench._grid(fire_made)
        == [{"loss_kwargs": {"batch_dice": False}, "amp": True, "init_weights": None}]
    )
    # and a table cell reads the same way: JSON words for settings, names and "(default)" as they are
    row = {"loss_kwargs": {"batch_dice": False}, "amp": True, "network": "unet", "seed": bench.DEFAULT}
    row |= dict.fromkeys(
        ["dice_mean", "dice_median", "dice_worst", "jaccard_mean", "pooled_dice", "pooled_jaccard"], 0.5
    )
    table = bench._grid_table([{**row, "empty_truth_cases": 0}], ["loss_kwargs", "amp", "network", "seed"])
    assert table.splitlines()[-1].startswith(f'| {{"batch_dice": false}} | true | unet | {bench.DEFAULT} | 0.5000 |')


def test_first_stage_keys_are_split_from_the_bundle_overrides_and_recorded() -> None:
    combo = {"amp": True, "pretrain_max_epochs": 14, "pretrain_amp": True}
    assert bench.split_stage1("brain_tumor", combo) == ({"amp": True}, {"max_epochs": 14, "amp": True})
    with pytest.raises(SystemExit, match="no first stage"):
        bench.split_stage1("ph2_melanoma", {"pretrain_max_epochs": 3})
    keys = ["pretrain_max_epochs", "pretrain_amp", "pretrain_dataset"]
    assert bench._settings("brain_tumor", keys, [], {"max_epochs": 14}) == {
        "pretrain_max_epochs": 14,
        "pretrain_amp": bench.PRETRAIN["brain_tumor"]["amp"],
        "pretrain_dataset": bench.PRETRAIN["brain_tumor"]["dataset"],
    }
    assert bench._settings("ph2_melanoma", ["pretrain_max_epochs"], []) == {"pretrain_max_epochs": bench.DEFAULT}
    # a first-stage key PRETRAIN does not set is the bundle's: stage 1 trains the bundle's loss unless told otherwise
    loss = bench.bundle_defaults("brain_tumor", ["loss_kwargs"])["loss_kwargs"]
    assert bench._settings("brain_tumor", ["pretrain_loss_kwargs"], []) == {"pretrain_loss_kwargs": loss}
    changed = {"loss_kwargs": {"batch_dice": True}}
    assert bench._settings("brain_tumor", ["pretrain_loss_kwargs"], [], changed) == {
        "pretrain_loss_kwargs": {"batch_dice": True}
    }
    # a sweep row: the first stage's settings, or none where the point gives its own checkpoint (no first stage)
    keys = ["init_weights", "pretrain_max_epochs", "seed"]
    assert bench.point_settings("brain_tumor", keys, {"seed": 1}) == {
        "init_weights": bench.PRETRAINED,
        "pretrain_max_epochs": bench.PRETRAIN["brain_tumor"]["max_epochs"],
        "seed": 1,
    }
    assert bench.point_settings("brain_tumor", keys, {"init_weights": "/w/model.pt"}) == {
        "init_weights": "/w/model.pt",
        "pretrain_max_epochs": bench.NO_STAGE1,
        "seed": bench.bundle_defaults("brain_tumor", ["seed"])["seed"],
    }


def test_a_first_stage_is_trained_once_and_reused_while_nothing_it_depends_on_changes(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(bench, "WORK", tmp_path / "work")
    if not (bench.ROOT / "data" / "prepared" / "brain2146" / "datalist.json").is_file():
        monkeypatch.setattr(bench, "ROOT", tmp_path)  # a stand-in tree: the bundle config, shared code, a datalist
        (tmp_path / "data" / "prepared" / "brain2146").mkdir(parents=True)
        (tmp_path / "data" / "prepared" / "brain2146" / "datalist.json").write_text("{}")
        (tmp_path / "bundles" / "brain_tumor" / "configs").mkdir(parents=True)
        (tmp_path / "bundles" / "brain_tumor" / "configs" / "train.json").write_text("{}")
        (tmp_path / "bundles" / "_shared" / "scripts").mkdir(parents=True)
    calls = []

    def fake_train(task: str, args: list[str]) -> None:  # what the bundle leaves in ckpt_dir
        assert args[:3] == ["run", "--config_file", "configs/train.json"]
        given = dict(zip(args[3::2], args[4::2], strict=True))
        calls.append(given)
        ckpt = Path(given["--ckpt_dir"])
        ckpt.mkdir(parents=True, exist_ok=True)
        (ckpt / "model.pt").write_bytes(b"weights")
        (ckpt / "history.json").write_text(json.dumps([{"val_mean_dice": 0.5}, {"val_mean_dice": 0.6}]))

    monkeypatch.setattr(bench, "run_monai_bundle", fake_train)
    first = bench.pretrain("brain_tumor", {"max_epochs": 2})
    assert len(calls) == 1 and calls[0]["--max_epochs"] == "2" and calls[0]["--amp"] == "False"
    assert first["best_val_dice_box_level"] == 0.6 and "reused" not in first
    again = bench.pretrain("brain_tumor", {"max_epochs": 2})
    assert len(calls) == 1 and again["reused"] and again["train_seconds"] == first["train_seconds"]
    bench.pretrain("brain_tumor", {"max_epochs": 3})  # other settings: their own checkpoint
    assert len(calls) == 2
    monkeypatch.setattr(bench, "_stage1_fingerprint", lambda task, spec: "changed code")
    bench.pretrain("brain_tumor", {"max_epochs": 2})  # the code it depends on changed: trained again
    assert len(calls) == 3


def test_a_first_stage_depends_on_the_code_training_uses_not_on_inference_code() -> None:
    names = {p.name for p in bench.training_modules("brain_tumor")}
    assert {"__init__.py", "losses.py", "networks.py", "transforms.py", "data.py"} <= names
    assert "onnx_inferer.py" not in names and "report.py" not in names  # inference and reporting only


def test_a_first_stage_is_kept_through_changes_to_settings_it_sets_itself_or_never_reads(
    tmp_path: Path, monkeypatch
) -> None:
    configs = tmp_path / "bundles" / "brain_tumor" / "configs"
    shutil.copytree(ROOT / "bundles" / "brain_tumor" / "configs", configs)
    shutil.copytree(ROOT / "bundles" / "_shared" / "scripts", tmp_path / "bundles" / "_shared" / "scripts")
    (tmp_path / "data" / "prepared" / "brain2146").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "brain2146" / "datalist.json").write_text("{}")
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    spec = bench.PRETRAIN["brain_tumor"]
    config = json.loads((configs / "train.json").read_text())
    kept = bench.stage1_config("brain_tumor", spec)
    assert {"run", "initialize", "imports", "network_def", "learning_rate", "spatial_size"} <= set(kept)
    assert {"tta_views", "max_epochs", "dataset_dir", "amp"}.isdisjoint(kept)  # unread, or set by the stage

    def fingerprint_with(**changes) -> str:
        (configs / "train.json").write_text(json.dumps({**config, **changes}, indent=4))
        return bench._stage1_fingerprint("brain_tumor", spec)

    base = fingerprint_with()
    assert fingerprint_with(tta_views=4, max_epochs=999) == base  # evaluation-only, and the stage's own epochs
    assert fingerprint_with(learning_rate=config["learning_rate"] * 2) != base  # what training reads
    assert fingerprint_with(spatial_size=[128, 128]) != base
    assert fingerprint_with(unknown_block={"_target_": "Identity"}) != base  # a component may act unreferenced
    assert bench._stage1_fingerprint("brain_tumor", {**spec, "max_epochs": 2}) != base  # the stage's settings


def test_a_named_postprocess_grid_keeps_the_earlier_file_of_the_same_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(bench, "WORK", tmp_path / "work")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    run = "sweep/trus_prostate/seed-0_40ep"
    (tmp_path / "work" / run / "models").mkdir(parents=True)
    (tmp_path / "work" / run / "models" / "model.pt").write_bytes(b"")
    seen = []

    def fake_evaluate(task: str, work: Path, overrides: list[str], out: Path) -> dict:
        seen.append(overrides)
        views = int(overrides[overrides.index("--tta_views") + 1])
        dice = {"n": 2, "mean": 0.5 + 0.01 * views, "median": 0.5, "worst": 0.1}
        scores = {"dice_nonempty": dice, "jaccard_nonempty": {**dice, "mean": 0.4}, "pooled_dice": 0.6}
        return {
            "classes": {"1": {**scores, "pooled_jaccard": 0.45, "empty_truth_cases": 1, "empty_predicted_empty": 1}}
        }

    monkeypatch.setattr(bench, "evaluate_task", fake_evaluate)
    bench.postprocess("trus_prostate", grid='{"tta_views": [1, 3]}', run=run)
    bench.postprocess("trus_prostate", grid='{"tta_views": [1, 4]}', run=run, name="tta")
    first = json.loads((tmp_path / "results" / "postprocess_trus_prostate_seed-0_40ep.json").read_text())
    named = json.loads((tmp_path / "results" / "postprocess_trus_prostate_seed-0_40ep_tta.json").read_text())
    assert [r["tta_views"] for r in first["rows"]] == [1, 3] and [r["tta_views"] for r in named["rows"]] == [1, 4]
    assert named["best"]["tta_views"] == 4 and named["command"].endswith(f"--run {run} --name tta")
    assert "--name" not in first["command"] and len(seen) == 4


def test_auc_is_the_chance_a_positive_case_scores_above_a_negative_one() -> None:
    import numpy as np

    empty = _load("bench_empty_cases")
    assert empty.auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert empty.auc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert empty.auc(np.array([0.1, 0.5]), np.array([0.5, 0.9])) == 0.875  # 3 above, 1 tie of 4 pairs


def test_the_empty_case_classifier_trains_on_other_folds_and_scores_fold_0(tmp_path: Path, monkeypatch) -> None:
    from lesiondata.synthetic import make_demo_dataset

    empty = _load("bench_empty_cases")
    data = make_demo_dataset("trus_prostate", tmp_path / "data", n=12, seed=3)
    monkeypatch.setattr(empty, "RESULTS", tmp_path / "results")
    for target in ("presence", "quality"):
        empty.classifier(target=target, size=32, epochs=2, eval_every=1, dataset_dir=str(data))
        saved = json.loads(
            (tmp_path / "results" / f"empty_cases_trus_prostate_classifier_{target}_32.json").read_text()
        )
        assert [c["epoch"] for c in saved["checks"]] == [1, 2]
        assert all(0.0 <= c["auc"] <= 1.0 and "90%" in c for c in saved["checks"])
        assert f"--target {target}" in saved["command"]
        assert target == "presence" or sum(map(sum, saved["grade_vs_empty"].values())) == 12
    with pytest.raises(SystemExit, match="presence"):
        empty.classifier(target="grade", dataset_dir=str(data))


def test_an_inference_benchmark_ensemble_is_its_members_merged_and_exported(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime

    inference = _load("bench_inference")
    single = inference.prepare("ph2_melanoma", tmp_path, epochs=1)
    pair = inference.prepare("ph2_melanoma", tmp_path, epochs=1, ensemble_size=2)
    assert pair["models"] == tmp_path / "ensemble2" and pair["task"]["ensemble_size"] == 2
    assert "ensemble_size" not in single["task"] and pair["members"] == [tmp_path / "models", tmp_path / "member1"]
    assert json.loads((pair["models"] / "ensemble.json").read_text())["ensemble_size"] == 2
    other = inference.export_bundle("ph2_melanoma", ckpt_dir=tmp_path / "member1", formats="onnx", quiet=True)["onnx"]
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)  # PH2: RGB; batch and size are free
    outputs = []
    for path in (single["models"] / "model.onnx", other, pair["models"] / "model.onnx"):
        session = onnxruntime.InferenceSession(str(path))
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])

    def softmax(logits):
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    # two members trained with other seeds, and their merged export gives their mean class probability (its
    # outputs are log mean probabilities); distinct weights, so the timed graph runs both networks
    assert np.abs(softmax(outputs[0]) - softmax(outputs[1])).max() > 1e-3
    np.testing.assert_allclose(np.exp(outputs[2]), (softmax(outputs[0]) + softmax(outputs[1])) / 2, atol=1e-5)
    assert (pair["models"] / "model.onnx").stat().st_size > 1.8 * (single["models"] / "model.onnx").stat().st_size


def test_an_inference_table_keeps_each_network_and_tta_setting_of_a_bundle_apart() -> None:
    inference = _load("bench_inference")

    def row(network: str, mode: str, p50: float, ensemble: int = 1, views: int = 1, correct: bool = True) -> dict:
        stages = {"p50_load_pre_ms": 5.0, "p50_network_ms": p50 - 10.0, "p50_post_ms": 5.0}
        return {"bundle": "brain_tumor", "network": network, "input_size": 256, "mode": mode, "p50_ms": p50,
                "ensemble_size": ensemble, "tta_views": views, "correct": correct, **stages}  # fmt: skip

    results = [row("unet", "fp32", 40.0), row("unet", "onnx", 35.0)]
    results += [row("unet, 4 flip views", "fp32", 120.0, views=4), row("unet, 4 flip views", "onnx", 90.0, views=4)]
    results += [row("2 x unet", "fp32", 70.0, ensemble=2), row("2 x unet", "onnx", 60.0, ensemble=2, correct=False)]
    older = row("2 x unet", "fp32", 75.0)  # a record from before the rows held their counts
    del older["ensemble_size"], older["tta_views"]
    best = inference.fastest(results)
    # one plain pass keeps the bundle's own key; the others are apart, and an incorrect mode never wins
    assert best == {
        "brain_tumor": {"256": "onnx"},
        "brain_tumor (unet, 4 flip views)": {"256": "onnx"},
        "brain_tumor (2 x unet)": {"256": "fp32"},
    }
    lines = inference.format_table(results).splitlines()
    assert len(lines) == 4 and [line.split("  ")[1].strip() for line in lines[1:]] == [
        "unet",
        "unet, 4 flip views",
        "2 x unet",
    ]
    assert "90 (0.75x)" in lines[2] and "60 (0.86x)" in lines[3]
    assert inference._group(older) == "brain_tumor (2 x unet)"


def test_per_case_comparison_finds_the_case_that_moves_the_means(tmp_path: Path, monkeypatch) -> None:
    """``cases`` reads each run's ``eval/per_image.csv`` (truth-empty rows and other classes left out) and names
    the case whose Dice varies most; the means without it are those of the remaining cases."""
    monkeypatch.setattr(bench, "WORK", tmp_path / "work")
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    per_run = {"a": {"IMD1": 0.95, "IMD2": 0.90, "IMD3": 0.98}, "b": {"IMD1": 0.96, "IMD2": 0.40, "IMD3": 0.97}}
    for run, dice in per_run.items():
        (tmp_path / "work" / run / "eval").mkdir(parents=True)
        lines = ["image,class,dice,jaccard,truth_empty,pred_empty", "/d/imagesTr/EMPTY.png,1,0.0,0.0,True,False"]
        lines += [f"/d/imagesTr/{c}.png,1,{v},{v / (2 - v)},False,False" for c, v in dice.items()]
        lines += [f"/d/imagesTr/{c}.png,2,0.1,0.05,False,False" for c in dice]
        (tmp_path / "work" / run / "eval" / "per_image.csv").write_text("\n".join(lines) + "\n")
    bench.cases("ph2_melanoma", "a,b", worst=2, name="t")
    record = json.loads((tmp_path / "results" / "cases_ph2_melanoma_t.json").read_text())
    assert record["swing_case"] == "IMD2" and sorted(record["dice"]) == ["IMD1", "IMD2", "IMD3"]
    a, b = record["summary"]
    assert a["dice_mean"] == round((0.95 + 0.90 + 0.98) / 3, 4) and b["without_IMD2"] == round((0.96 + 0.97) / 2, 4)
    assert b["without_own_worst"] == b["without_IMD2"]
    assert record["best_of_runs"] == round((0.96 + 0.90 + 0.98) / 3, 4)
    markdown = (tmp_path / "results" / "cases_ph2_melanoma_t.md").read_text()
    assert "| IMD2 | 0.900 | 0.400 | 0.500 |" in markdown and "EMPTY" not in markdown
    with pytest.raises(SystemExit, match="two or more"):
        bench.cases("ph2_melanoma", "a")


def test_commit_stamp_is_dirty_for_code_changes_not_for_the_benchmarks_own_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``evaluate --tasks all`` writes one record, then evaluates the next task: the record just written must not mark
    the next evaluation's code as changed, while an edited bundle or script must."""
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "accuracy_x.json").write_text("{}\n")
    (tmp_path / "train.json").write_text("{}\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    head = subprocess.run([*git, "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert bench._commit() == head
    (tmp_path / "benchmarks" / "results" / "accuracy_x.json").write_text('{"summary": 1}\n')
    assert bench._commit() == head
    (tmp_path / "train.json").write_text('{"max_epochs": 2}\n')
    assert bench._commit() == f"{head}-dirty"
