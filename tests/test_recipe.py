"""The recipe schema as a user meets it: `leantrain train RECIPE` on bad recipes.

Every mistake must end the run with exit code 2 and exactly one line on stderr that
names the key, the file (and line) and what is allowed; never a traceback, unless
`--debug` asks for one. Overrides given with `--set` follow the same rules.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from leantrain.errors import RecipeError
from leantrain.recipe import Recipe, load_recipe, parse_recipe

# Concurrent subprocesses each using every core would oversubscribe the CPU (OpenMP
# threads spin-wait on each other): one compute thread per child process.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "leantrain", *args], cwd=cwd, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300
    )


def run_many(commands: dict[str, tuple[list[str], Path]]) -> dict[str, subprocess.CompletedProcess]:
    """Run independent CLI invocations concurrently (each pays torch's import time)."""
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(run_cli, *args, cwd=cwd) for name, (args, cwd) in commands.items()}
        return {name: f.result() for name, f in futures.items()}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    """1-based line number of the first line containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


VALID_HEAD = "model:\n  name_or_path: bundled:minilm\ndata:\n  train: data.csv\n"

# (recipe text, offending line's needle, fragments the error must contain)
BAD_RECIPES = {
    "misspelled section": (
        VALID_HEAD + "trian:\n  epochs: 1\n",
        "trian:",
        ["unknown key 'trian'", "allowed here: budget, cuts, data, hardware, model, output, train"],
    ),
    "misspelled nested key": (
        VALID_HEAD + "train:\n  epochs: 1\n  batchsize: 4\n",
        "batchsize",
        ["unknown key 'train.batchsize'", "allowed here:", "batch_size", "epochs", "lr,"],
    ),
    "unknown cut option": (
        VALID_HEAD + "cuts:\n  lora:\n    rank: 4\n",
        "rank",
        ["unknown key 'cuts.lora.rank'", "allowed here:", " r,", "alpha", "target_modules"],
    ),
    "wrong type": (
        VALID_HEAD + "train:\n  batch_size: many\n",
        "batch_size",
        ["train.batch_size", "integer", "'many'"],
    ),
    "bad literal": (
        "model:\n  task: regression\n",
        "task",
        ["model.task", "'sequence-classification'", "'causal-lm'", "'regression'"],
    ),
    "out of range fraction": (
        VALID_HEAD.replace("train: data.csv", "train: data.csv\n  eval_fraction: 1.5"),
        "eval_fraction",
        ["data.eval_fraction", "less than 1", "1.5"],
    ),
    "bad cut shorthand": (
        "cuts:\n  precision: fp64\n",
        "precision",
        ["cuts.precision.dtype", "'fp32'", "'bf16'", "'fp16'", "'fp64'"],
    ),
}


NON_MAPPING = {"list": "- train\n- model\n"}
MALFORMED = "train:\n  epochs: 1\n  lr: [0.1, 0.2\nmodel: {}\n"
OVERRIDE_BASE = "cuts:\n  precision: bf16\ntrain:\n  epochs: 1\n"
GOOD_RECIPE = "model:\n  name_or_path: bundled:minilm\ncuts:\n  precision: bf16\ntrain:\n  epochs: 3\n  lr: 0.1\n"
GOOD_OVERRIDES = [
    "cuts.precision.dtype=fp32",
    "train.epochs=2",
    "train.batch_size=4",
    "train.max_grad_norm=null",
    "output.save_model=false",
    "cuts.lora.target_modules=[query, value]",
    "data.train=my data.csv",
]
BAD_OVERRIDES = {
    "train.batchsize=4": ["unknown key 'train.batchsize'", "batch_size", "--set train.batchsize=4"],
    "trian.epochs=1": ["unknown key 'trian'", "--set trian.epochs=1"],
    "train.batch_size=many": ["train.batch_size", "integer", "'many'"],
    "cuts.precision.dtype=fp64": ["cuts.precision.dtype", "'bf16'"],
    "train.epochs": ["--set", "train.epochs", "section.key=value"],
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Every `leantrain` invocation of this module, run once, concurrently."""
    root = tmp_path_factory.mktemp("recipes")
    commands = {}
    for case, (text, _, _) in BAD_RECIPES.items():
        path = write(root / f"{case.replace(' ', '_')}.yaml", text)
        commands[case] = (["train", str(path)], root)
    debug = write(root / "debug.yaml", "model:\n  task: regression\n")
    commands["debug"] = (["--debug", "train", str(debug)], root)
    commands["malformed"] = (["train", str(write(root / "broken.yaml", MALFORMED))], root)
    for kind, text in NON_MAPPING.items():
        commands[f"non-mapping {kind}"] = (["train", str(write(root / f"{kind}.yaml", text))], root)
    commands["missing"] = (["train", str(root / "nope.yaml")], root)
    base = write(root / "override.yaml", OVERRIDE_BASE)
    for override in BAD_OVERRIDES:
        commands[f"override {override}"] = (["train", str(base), "--set", override], root)
    # and the commands that succeed
    good = write(root / "good.yaml", GOOD_RECIPE)
    commands["set"] = (["recipe", str(good), *(a for o in GOOD_OVERRIDES for a in ("--set", o))], root)
    commands["reference"] = (["recipe", "--reference"], root)
    commands["validate"] = (["recipe", str(write(root / "schedule.yaml", "train:\n  schedule: exponential\n"))], root)
    results = run_many(commands)
    results["_root"] = root
    return results


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipe_exits_2_with_one_line_naming_key_file_and_line(cli, case):
    text, needle, fragments = BAD_RECIPES[case]
    recipe = cli["_root"] / f"{case.replace(' ', '_')}.yaml"
    line = assert_one_line_error(cli[case], str(recipe), *fragments)
    assert f"{recipe}:{line_of(text, needle)}:" in line


def test_unknown_key_lists_only_recipe_keys_not_internal_fields(tmp_path):
    recipe = write(tmp_path / "bad.yaml", "trian: {}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    allowed = str(info.value).split("allowed here:")[1]
    assert sorted(k.strip() for k in allowed.split(",")) == sorted(
        ["model", "data", "cuts", "train", "budget", "hardware", "output"]
    )


@pytest.mark.parametrize("key", ["name", "source"])
def test_internal_fields_cannot_be_set_from_a_recipe(tmp_path, key):
    recipe = write(tmp_path / "r.yaml", f"train:\n  epochs: 1\n{key}: /somewhere\n")
    with pytest.raises(RecipeError, match=rf"r\.yaml:3: unknown key '{key}'"):
        load_recipe(recipe)


def test_debug_shows_the_traceback(cli):
    proc = cli["debug"]
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "RecipeError" in proc.stderr and "model.task" in proc.stderr


def test_malformed_yaml_exits_2_with_line(cli):
    recipe = cli["_root"] / "broken.yaml"
    line = assert_one_line_error(cli["malformed"], str(recipe), "malformed YAML")
    assert line.split(f"{recipe}:")[1].split(":")[0].isdigit()


@pytest.mark.parametrize("kind", sorted(NON_MAPPING))
def test_non_mapping_yaml_exits_2(cli, kind):
    assert_one_line_error(cli[f"non-mapping {kind}"], str(cli["_root"] / f"{kind}.yaml"), "mapping", kind)


# The same rules, checked in-process through the CLI's entry point (no torch import per case).
IN_PROCESS = {
    "out of range lr": ("train:\n  lr: -0.1\n", [], ["bad.yaml:2:", "train.lr", "greater than 0", "-0.1"]),
    "string recipe": ("just a string\n", [], ["bad.yaml", "mapping", "str"]),
    "unknown hardware key": ("hardware:\n  gpu: a100\n", [], ["bad.yaml:2:", "hardware.gpu", "name, price_per_hour"]),
    "override of a scalar as a section": (
        "model:\n  name_or_path: some/model\n", ["model.name_or_path.x=1"], ["'name_or_path'", "not a section"]
    ),
    "override of a number as a section": (  # 1 == True must not pass for `lora: true`
        "train:\n  epochs: 1\n", ["train.epochs.x=1"], ["'epochs' is 1", "not a section"]
    ),
}


@pytest.mark.parametrize("case", sorted(IN_PROCESS))
def test_more_bad_recipes_print_one_line_and_return_2(tmp_path, capsys, case):
    from leantrain.cli import main

    text, overrides, fragments = IN_PROCESS[case]
    recipe = write(tmp_path / "bad.yaml", text)
    code = main(["train", str(recipe), *(a for o in overrides for a in ("--set", o))])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_non_mapping_yaml_is_rejected_even_with_overrides(tmp_path):
    recipe = write(tmp_path / "list.yaml", "- train\n- model\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(recipe, ["train.epochs=1"])


def test_missing_recipe_file_exits_2(cli):
    assert_one_line_error(cli["missing"], "nope.yaml", "not found")


# ---------------------------------------------------------------- --set overrides


def test_set_overrides_are_typed_repeatable_and_expand_cut_shorthand(cli):
    proc = cli["set"]
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert resolved["cuts"]["precision"] == {"enabled": True, "dtype": "fp32", "frozen_dtype": None, "cpu_matmul_attention": True, "cpu_fallback": True}
    assert resolved["train"]["epochs"] == 2
    assert resolved["train"]["batch_size"] == 4 and isinstance(resolved["train"]["batch_size"], int)
    assert resolved["train"]["max_grad_norm"] is None
    assert resolved["train"]["lr"] == 0.1  # untouched keys keep the file's value
    assert resolved["output"]["save_model"] is False
    assert resolved["cuts"]["lora"]["enabled"] is True
    assert resolved["cuts"]["lora"]["target_modules"] == ["query", "value"]
    assert resolved["data"]["train"] == "my data.csv"


def test_set_later_override_wins(tmp_path):
    recipe = write(tmp_path / "r.yaml", "train:\n  epochs: 3\n")
    loaded = load_recipe(recipe, ["train.epochs=1", "train.epochs=5"])
    assert loaded.train.epochs == 5


@pytest.mark.parametrize("override", sorted(BAD_OVERRIDES))
def test_bad_override_fails_the_same_way(cli, override):
    recipe = cli["_root"] / "override.yaml"
    line = assert_one_line_error(cli[f"override {override}"], *BAD_OVERRIDES[override])
    if "=" in override:
        assert str(recipe) in line
        # The bad value is not in the file: no file line number may be claimed for it.
        assert f"{recipe}:" not in line


def test_dict_recipe_errors_name_the_key(tmp_path):
    with pytest.raises(RecipeError, match=r"train\.batch_size.*integer"):
        parse_recipe({"train": {"batch_size": "many"}})


# ---------------------------------------------------------------- reference


def _schema_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_schema_keys(ann, f"{prefix}{name}."))
    return keys


def test_reference_lists_every_schema_key(cli):
    proc = cli["reference"]
    assert proc.returncode == 0, proc.stderr
    keys = _schema_keys(Recipe)
    leaves = [k for k in keys if k.count(".") >= 1]
    assert len(leaves) > 30  # the walk really reached the nested sections
    for section in ("model", "data", "train", "budget", "hardware", "output"):
        assert any(k.startswith(section + ".") for k in leaves), section
    for cut in ("lora", "precision", "gradient_checkpointing", "grad_accumulation", "early_stopping"):
        assert f"cuts.{cut}.enabled" in leaves
    for key in leaves:
        assert f"`{key}`" in proc.stdout, key


def test_recipe_command_validates_a_file(cli):
    recipe = cli["_root"] / "schedule.yaml"
    assert_one_line_error(cli["validate"], f"{recipe}:2", "train.schedule", "'cosine'")
