"""One entry per model, dataset source and augmentation op.

The schema names exactly what the registries hold (so adding a model touches the registry and the
schema, and this file fails if one is forgotten); config's checks come from the entries; every
entry's code exists and is a code dependency of the stages that run it; and the registries stay
light, since Snakemake imports ladder.config each time it loads the workflow.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pkgutil
import re
import shutil
import subprocess
import sys
from unittest.mock import ANY

import pytest
from conftest import REPO
from ladder import config, stages
from ladder.augment_registry import OPS
from ladder.config import ConfigError, Params
from ladder.data.registry import SOURCES
from ladder.model_registry import MODELS

SCHEMA = config.schema()
DEFS = SCHEMA["$defs"]


def resolve(**experiment) -> dict:
    return Params.from_dict({"experiments": {"a": experiment}}).experiments["a"].train


# ----------------------------------------------------------------------------------------------
# The schema names what the registries hold


def test_schema_models_are_the_registry():
    model = DEFS["model"]["properties"]
    assert model["name"]["enum"] == list(MODELS)
    read = {key for entry in MODELS.values() for key in entry.settings}
    assert {"name", *read} == set(model), "a model.* key no model reads, or one not in the schema"


def test_schema_sources_are_the_registry():
    dataset = SCHEMA["properties"]["dataset"]["properties"]
    assert dataset["source"]["enum"] == list(SOURCES)
    read = {key for entry in SOURCES.values() for key in entry.reads}
    prepare = Params.from_dict({"dataset": {"source": "digits"}}).prepare_settings()
    # every dataset key is read by prepare or by some source's download
    assert read | set(prepare) - {"code"} == set(dataset)
    assert read <= set(dataset)


def test_schema_augment_ops_are_the_registry_in_order():
    ops = DEFS["augment"]["properties"]
    assert list(ops) == [op.name for op in OPS]  # the schema documents the order they apply in
    for op in OPS:
        node = ops[op.name]
        if op.bare:
            assert "properties" not in node, op.name
        else:
            assert set(node["properties"]) == {"p", *op.settings}, op.name


# ----------------------------------------------------------------------------------------------
# Config's checks come from the entries


@pytest.mark.parametrize("name", MODELS)
def test_a_model_keeps_exactly_its_entrys_settings(name):
    entry = MODELS[name]
    assert set(resolve(model={"name": name})["model"]) == {"name", *entry.settings}
    model_schema = DEFS["model"]["properties"]
    for key in set(model_schema) - {"name", *entry.settings}:
        value = config.defaults(model_schema[key])
        with pytest.raises(ConfigError, match=rf"model\.{key}: does not apply to model '{name}'"):
            resolve(model={"name": name, key: value})


@pytest.mark.parametrize("name", [n for n, m in MODELS.items() if "unstride" in m.settings])
def test_unstride_values_are_the_entrys(name):
    entry = MODELS[name]
    assert entry.unstride, "a model that reads unstride lists the values it allows"
    for n in range(max(entry.unstride) + 3):
        if n in entry.unstride:
            assert resolve(model={"name": name, "unstride": n})["model"]["unstride"] == n
        else:
            too_many = "is more halvings of resolution than the model has"
            why = entry.unstride_refusal if n < max(entry.unstride) else too_many
            refusal = re.escape(f"model.unstride: {n} {why}; {name} allows")
            with pytest.raises(ConfigError, match=refusal):
                resolve(model={"name": name, "unstride": n})


@pytest.mark.parametrize("name", [n for n, m in MODELS.items() if "shakedrop" in m.settings])
def test_shakedrop_stages_are_the_entrys(name):
    valid = MODELS[name].shakedrop_stages
    assert valid, "a model that reads shakedrop lists its stages"
    for stage in range(1, valid.stop + 2):
        model = {"name": name, "shakedrop": {"p_drop": 0.5, "stages": [stage]}}
        if stage in valid:
            assert resolve(model=model)["model"]["shakedrop"]["stages"] == [stage]
        else:
            span = f"{valid.start}..{valid.stop - 1}"
            with pytest.raises(
                ConfigError, match=rf"stages: \[{stage}\] - {name} has stages {span}"
            ):
                resolve(model=model)


def test_model_checks_read_the_registry_when_they_run(monkeypatch):
    entry = dataclasses.replace(MODELS["resnet18"], unstride=(0, 2))
    monkeypatch.setitem(MODELS, "resnet18", entry)
    assert resolve(model={"name": "resnet18", "unstride": 2})["model"]["unstride"] == 2
    with pytest.raises(ConfigError, match=r"resnet18 allows 0, 2"):
        resolve(model={"name": "resnet18", "unstride": 1})


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("test_path", ["", "elsewhere/test"])
def test_a_sources_stage_settings_are_its_entrys(name, test_path):
    entry = SOURCES[name]
    p = Params.from_dict({"dataset": {"source": name, "test_path": test_path}})
    assert set(p.download_settings()) == {"source", *entry.reads, "code"}
    draws_test = not entry.own_test_set(p.dataset)
    assert ("test_fraction" in p.prepare_settings()) == draws_test


def test_source_settings_read_the_registry_when_they_run(monkeypatch):
    entry = dataclasses.replace(SOURCES["digits"], reads=("path",), own_test_set=lambda d: True)
    monkeypatch.setitem(SOURCES, "digits", entry)
    p = Params.from_dict({"dataset": {"source": "digits"}})
    assert p.download_settings() == {"source": "digits", "path": "", "code": ANY}
    assert "test_fraction" not in p.prepare_settings()


@pytest.mark.parametrize("op", [op for op in OPS if not op.bare], ids=lambda op: op.name)
def test_an_op_keeps_its_entrys_settings_when_on_and_is_left_out_when_off(op):
    assert set(resolve(augment={op.name: {"p": 0.5}})["augment"][op.name]) == {"p", *op.settings}
    assert op.name not in resolve(augment={op.name: {"p": 0.0, **SET[op.name]}})["augment"]
    assert op.probability({}) == 0  # what an absent op means to training, TTA and the report


# A setting other than p for each op, so that "off" above is not off because nothing was set.
SET = {
    "translate": {"max": 0.25}, "rotate": {"degrees": 5.0}, "blur": {"kernel": 5},
    "solarize": {"threshold": 0.3}, "randaugment": {"ops": 1}, "trivialaugment": {"bins": 11},
    "autoaugment": {"policy": "svhn"}, "erase": {"value": 0.5},
}  # fmt: skip


def test_settings_name_only_the_ops_that_are_on_so_a_new_op_reruns_nothing():
    """Every op but the flip is off unless an experiment sets it (the schema's defaults), and
    resolution leaves the ops that are off out of the settings: adding an op (off by default) to
    the registry changes no existing experiment's settings file, so neither engine reruns it
    (when every op that was off was written as `{p: 0}`, each new op reran every experiment)."""
    assert resolve()["augment"] == {"hflip": 0.5}
    assert resolve(augment={"hflip": 0.0})["augment"] == {}
    on = resolve(augment={"hflip": 0.0, "erase": {"p": 0.25}, "blur": {"p": 0.0, "kernel": 5}})
    assert set(on["augment"]) == {"erase"}
    assert set(SET) == {op.name for op in OPS if not op.bare}


def test_the_pipeline_order_is_the_seeds():
    """flip, translate, rotate, blur, solarize, then the automatic policies (after the geometric
    ops, as torchvision's reference recipes), then erasing (as the recipes that use it): results
    depend on the order."""
    seed = ["hflip", "translate", "rotate", "blur", "solarize"]
    policies = ["randaugment", "trivialaugment", "autoaugment"]
    assert [op.name for op in OPS] == [*seed, *policies, "erase"]


# ----------------------------------------------------------------------------------------------
# Each entry's code exists and is a code dependency of the stages that run it


def module_file(ref: str) -> str:
    """'ladder.models:build_mynet' -> 'workflow/ladder/models/__init__.py'."""
    spec = importlib.util.find_spec(ref.partition(":")[0])
    return spec.origin.removeprefix(f"{REPO}/")


# Train and evaluate depend on the ops through code.json, download and prepare on the sources
# through download.json and prepare.json: only the report lists the ops' files itself.
REFERENCES = [(f"op {op.name}", op.apply, ("report",)) for op in OPS]


@pytest.mark.parametrize(("what", "ref", "stage_names"), REFERENCES, ids=[r[0] for r in REFERENCES])
def test_every_entry_names_a_function_its_stages_list_as_code(what, ref, stage_names):
    assert callable(pkgutil.resolve_name(ref)), f"{what}: {ref} is not a function"
    for name in stage_names:
        assert module_file(ref) in stages.STAGES[name].code, f"{what}: {ref} in stage {name}"


@pytest.mark.parametrize("name", list(MODELS))
def test_a_model_lists_every_file_its_builder_runs(name):
    """An experiment's training and evaluation depend on its model's `code` (code.json), not on
    the other models' files: a file the builder imports but the entry does not list would
    change the weights without rerunning anything."""
    from test_stages import PLUMBING, closure

    entry = MODELS[name]
    assert callable(entry.builder()), f"model {name}: {entry.build} is not a function"
    builder = module_file(entry.build).removeprefix("workflow/")
    listed = {f"ladder/{rel}" for rel in entry.code}
    # Shared by every model: in the stages' own code (ladder.stages._RUN).
    shared = {c.removeprefix("workflow/") for c in stages.STAGES["train"].code}
    needed = closure(builder, PLUMBING) - set(PLUMBING) - shared
    assert needed == listed, f"model {name}: its builder runs {sorted(needed)}"


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_an_op_lists_every_file_it_runs(op):
    """An experiment's training and evaluation depend on the `code` of the ops it turns on
    (code.json), not on the other ops' files."""
    from test_stages import PLUMBING, closure

    module = module_file(op.apply).removeprefix("workflow/")
    listed = {f"ladder/{rel}" for rel in op.code}
    shared = {c.removeprefix("workflow/") for c in stages.STAGES["train"].code}
    needed = closure(module, PLUMBING) - set(PLUMBING) - shared
    assert needed == listed, f"op {op.name}: it runs {sorted(needed)}"


SOURCE_ROLES = [(n, role) for n in SOURCES for role in ("download", "layout")]


@pytest.mark.parametrize(("name", "role"), SOURCE_ROLES, ids=[f"{n}-{r}" for n, r in SOURCE_ROLES])
def test_a_source_lists_every_file_its_functions_run(name, role):
    """download.json and prepare.json record the files of the source in use: a file its
    function imports but its entry does not list would change the data without rerunning
    anything."""
    from test_stages import PLUMBING, closure

    entry = SOURCES[name]
    ref = getattr(entry, role)
    assert callable(pkgutil.resolve_name(ref)), f"source {name}: {ref} is not a function"
    module = module_file(ref).removeprefix("workflow/")
    listed = {f"ladder/{rel}" for rel in getattr(entry, f"{role}_code")}
    stage = stages.STAGES["download" if role == "download" else "prepare"]
    shared = {c.removeprefix("workflow/") for c in stage.code}
    needed = closure(module, PLUMBING) - set(PLUMBING) - shared
    assert needed == listed, f"source {name} {role}: it runs {sorted(needed)}"


def test_editing_one_source_changes_only_the_settings_of_the_datasets_that_use_it(
    tmp_path, monkeypatch
):
    digits, tiny = (
        Params.from_dict({"dataset": {"source": s}}) for s in ("digits", "tinyimagenet")
    )
    before = [p.settings_files() for p in (digits, tiny)]
    shutil.copytree(REPO / "workflow" / "ladder", tmp_path / "ladder")
    monkeypatch.setattr(config, "PACKAGE", tmp_path / "ladder")
    edited = tmp_path / "ladder" / "data" / "digits.py"
    edited.write_text(edited.read_text() + "\n# an edit\n")
    after = [p.settings_files() for p in (digits, tiny)]
    assert [rel for rel in before[0] if before[0][rel] != after[0][rel]] == ["download.json"]
    assert after[1] == before[1]
    with pytest.raises(config.CodeChangedError, match=r"data/digits.py changed since x.json"):
        config.check_code(before[0]["download.json"]["code"], "x.json")


def test_editing_one_op_changes_only_the_code_records_of_experiments_that_use_it(
    tmp_path, monkeypatch
):
    params = Params.from_dict(
        {
            "experiments": {
                "plain": {"augment": {"hflip": 0.0}},
                "shifted": {"augment": {"hflip": 0.0, "translate": {"p": 0.5}}},
                "turned": {"augment": {"hflip": 0.0, "rotate": {"p": 0.5}}},
                "mixed": {"augment": {"hflip": 0.0}, "mix": {"cutmix_alpha": 1.0}},
            }
        }
    )
    before = params.settings_files()
    assert set(before["code/shifted.json"]["augment"]) == {"translate"}
    assert before["code/plain.json"]["augment"] == {}
    shutil.copytree(REPO / "workflow" / "ladder", tmp_path / "ladder")
    monkeypatch.setattr(config, "PACKAGE", tmp_path / "ladder")
    for edited, records in [
        ("augments/translate.py", ["code/shifted.json"]),
        ("augments/affine.py", ["code/shifted.json", "code/turned.json"]),  # both use it
        ("augments/blur.py", []),  # nobody's
        ("mixing.py", ["code/mixed.json"]),  # batch mixing: only the experiment that mixes
    ]:
        path = tmp_path / "ladder" / edited
        path.write_text(path.read_text() + "\n# an edit\n")
        after = params.settings_files()
        assert sorted(rel for rel in before if before[rel] != after[rel]) == records, edited
        before = after


def test_editing_one_model_changes_only_its_experiments_code_record(tmp_path, monkeypatch):
    params = Params.from_dict(
        {
            "experiments": {
                "small": {"model": {"name": "mynet"}},
                "res": {"model": {"name": "resnet18"}},
            }
        }
    )
    before = params.settings_files()
    shutil.copytree(REPO / "workflow" / "ladder", tmp_path / "ladder")
    (tmp_path / "ladder" / "models" / "mynet.py").write_text("# mynet, edited\n")
    monkeypatch.setattr(config, "PACKAGE", tmp_path / "ladder")
    after = params.settings_files()
    changed = sorted(rel for rel in before if before[rel] != after[rel])
    assert changed == ["code/small.json"]


# ----------------------------------------------------------------------------------------------
# Light where it must be


def imported_by(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "ladder" in out
    return {name.split(".")[0] for name in out}


def test_config_imports_nothing_heavy():
    """Snakemake imports ladder.config every time it loads the workflow."""
    heavy = {"torch", "torchvision", "PIL", "sklearn", "pooch"}
    assert imported_by("import ladder.config") & heavy == set()


def test_torchvision_is_imported_only_for_a_torchvision_model():
    code = (
        "from ladder import models\n"
        "models.build({'name': 'mynet', 'blocks': 1, 'width': 4, 'dropout': 0.0}, 3, 8)"
    )
    imported = imported_by(code)
    assert "torch" in imported
    assert "torchvision" not in imported


@pytest.mark.parametrize("edited", ["models/mynet.py", "augments/translate.py", "mixing.py"])
def test_a_model_or_op_edited_after_its_code_record_was_written_is_refused(
    tmp_path, monkeypatch, edited
):
    train = resolve(
        model={"name": "mynet"}, augment={"translate": {"p": 0.5}}, mix={"mixup_alpha": 0.2}
    )
    recorded = config.code_record(train)
    config.check_code(recorded, "code/x.json")  # the code it records: runs
    shutil.copytree(REPO / "workflow" / "ladder", tmp_path / "ladder")
    (tmp_path / "ladder" / edited).write_text("# edited\n")
    monkeypatch.setattr(config, "PACKAGE", tmp_path / "ladder")
    with pytest.raises(config.CodeChangedError, match=rf"{edited} changed since code/x"):
        config.check_code(recorded, "code/x.json")
