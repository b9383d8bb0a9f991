"""params.yaml: schema, base: resolution, errors, and the settings files each stage reads."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from conftest import REPO, TINY_EXPERIMENTS, tiny_params
from ladder import config
from ladder.config import ConfigError, Params, source_code


def params(experiments: dict, **top) -> Params:
    return Params.from_dict({"experiments": experiments, **top}, source="test.yaml")


def test_base_chain_deep_merges_over_the_parent():
    p = params(
        {
            "a": {"optimizer": {"lr": 0.1, "momentum": 0.5}, "epochs": 3, "reference": {"val": 20}},
            "b": {"base": "a", "optimizer": {"lr": 0.2}},
            "c": {"base": "b", "epochs": 5, "augment": {"rotate": {"p": 0.5}}},
        }
    )
    c = p.experiments["c"]
    assert c.chain == ("c", "b", "a")
    assert c.train["optimizer"]["lr"] == 0.2  # from b
    assert c.train["optimizer"]["momentum"] == 0.5  # from a, untouched by b's partial override
    assert c.train["epochs"] == 5
    assert c.train["augment"]["rotate"] == {"p": 0.5, "degrees": 10.0}  # default degrees filled
    assert c.train["batch_size"] == 64  # schema default
    # reference and description are the experiment's own, never inherited
    assert p.experiments["b"].meta["reference"]["val"] is None
    assert p.experiments["a"].meta["reference"]["val"] == 20


def test_lists_are_replaced_not_concatenated():
    p = params(
        {
            "a": {"schedule": {"name": "multistep", "milestones": [5, 8]}, "epochs": 10},
            "b": {"base": "a", "schedule": {"milestones": [3]}},
        }
    )
    assert p.experiments["b"].train["schedule"]["milestones"] == [3]


def test_cycle_is_an_error_naming_the_cycle():
    with pytest.raises(ConfigError, match=r"experiments\.a\.base: inheritance cycle a -> b -> a"):
        params({"a": {"base": "b"}, "b": {"base": "a"}})


def test_unknown_base_suggests_the_closest_name():
    with pytest.raises(
        ConfigError,
        match=r"experiments\.b\.base: unknown experiment 'efnet' \(did you mean 'effnet'\?\)",
    ):
        params({"effnet": {}, "b": {"base": "efnet"}})


def test_unknown_key_names_the_path_and_suggests():
    with pytest.raises(ConfigError) as err:
        params({"a": {"optimizer": {"lrr": 0.1}}})
    assert "test.yaml: experiments.a.optimizer.lrr: unknown key (did you mean 'lr'?)" in str(
        err.value
    )


def test_unknown_top_level_and_dataset_keys():
    with pytest.raises(
        ConfigError, match=r"dataset\.split_sed: unknown key \(did you mean 'split_seed'\?\)"
    ):
        Params.from_dict({"dataset": {"split_sed": 1}})
    with pytest.raises(
        ConfigError, match=r"experimnts: unknown key \(did you mean 'experiments'\?\)"
    ):
        Params.from_dict({"experimnts": {}})


def test_wrong_types_and_ranges_name_the_key():
    with pytest.raises(
        ConfigError, match=r"experiments\.a\.epochs: 0 is less than the minimum of 1"
    ):
        params({"a": {"epochs": 0}})
    with pytest.raises(ConfigError, match=r"YAML reads 1e-4 as text: write 1\.0e-4"):
        params({"a": {"optimizer": {"weight_decay": "1e-4"}}})


def test_cross_key_rules():
    with pytest.raises(ConfigError, match=r"schedule\.milestones: \[5, 3\] must increase"):
        params({"a": {"schedule": {"name": "multistep", "milestones": [5, 3]}}})
    with pytest.raises(ConfigError, match=r"model\.unstride: 2 would split a residual block"):
        params({"a": {"model": {"name": "resnet18", "unstride": 2}}})
    with pytest.raises(ConfigError, match=r"model\.shakedrop\.stages: \[9\]"):
        params(
            {
                "a": {
                    "model": {
                        "name": "efficientnet_v2_s",
                        "shakedrop": {"p_drop": 0.5, "stages": [9]},
                    }
                }
            }
        )
    with pytest.raises(ConfigError, match=r"optimizer\.nesterov: Nesterov needs momentum > 0"):
        params({"a": {"optimizer": {"momentum": 0.0}}})


def test_a_setting_that_does_not_apply_is_an_error_where_written_and_dropped_when_inherited():
    with pytest.raises(
        ConfigError, match=r"experiments\.a\.model\.maxpool: does not apply to model 'mynet'"
    ):
        params({"a": {"model": {"maxpool": False}}})
    p = params(
        {
            "r": {"model": {"name": "resnet18", "unstride": 3, "maxpool": False}},
            "e": {"base": "r", "model": {"name": "efficientnet_v2_s", "unstride": 2}},
        }
    )
    assert "maxpool" not in p.experiments["e"].train["model"]


def test_irrelevant_edits_keep_the_fingerprint():
    base = {"a": {"schedule": {"name": "cosine"}, "augment": {"blur": {"p": 0.0, "kernel": 3}}}}
    edited = copy.deepcopy(base)
    edited["a"]["augment"]["blur"]["kernel"] = 5  # blur is off: its kernel means nothing
    assert params(base).experiments["a"].fingerprint == params(edited).experiments["a"].fingerprint
    edited["a"]["schedule"]["t_max"] = 7
    assert params(base).experiments["a"].fingerprint != params(edited).experiments["a"].fingerprint


def test_whole_numbers_and_floats_are_the_same_setting():
    a = params({"a": {"model": {"dropout": 0}, "optimizer": {"lr": 1}}}).experiments["a"]
    b = params({"a": {"model": {"dropout": 0.0}, "optimizer": {"lr": 1.0}}}).experiments["a"]
    assert config.canonical_json(a.train) == config.canonical_json(b.train)


def test_t_max_defaults_to_epochs_and_checkpoint_epochs():
    e = params(
        {"a": {"schedule": {"name": "cosine"}, "epochs": 7, "checkpoint_every": 3}}
    ).experiments["a"]
    assert e.train["schedule"]["t_max"] == 7
    assert e.checkpoint_epochs == [3, 6, 7]


def test_tta_inherits_top_level_then_the_base_chain():
    p = params(
        {"a": {"tta": {"passes": 5}}, "b": {"base": "a"}, "c": {}},
        tta={"passes": 10, "seed": 3},
    )
    assert p.experiments["b"].evaluate == {"passes": 5, "augment": "train", "seed": 3}
    assert p.experiments["c"].evaluate == {"passes": 10, "augment": "train", "seed": 3}
    # TTA is not a training setting: changing it never changes what training depends on
    assert "tta" not in p.experiments["a"].train


def test_run_selection_and_descendants():
    p = params({"a": {}, "b": {"base": "a"}, "c": {"base": "b"}, "d": {}}, run=["c", "d"])
    assert p.selected == ("c", "d")
    assert p.descendants("a") == ["a", "b", "c"]
    with pytest.raises(
        ConfigError, match=r"run: unknown experiment 'efnet' \(did you mean 'effnet'\?\)"
    ):
        params({"effnet": {}}, run=["efnet"])


def test_stage_settings_only_hold_what_the_stage_reads():
    p = Params.from_dict(tiny_params(val_fraction=0.25))
    assert p.download_settings() == {"source": "digits", "code": source_code("digits", "download")}
    assert p.prepare_settings() == {
        "source": "digits",
        "val_fraction": 0.25,
        "test_fraction": 0.2,
        "split_seed": 0,
        "image_size": 16,
        "code": source_code("digits", "layout"),
    }
    tin = Params.from_dict({"dataset": {"source": "tinyimagenet"}})
    assert "test_fraction" not in tin.prepare_settings()
    assert set(tin.download_settings()) == {"source", "url", "md5", "code"}
    assert set(tin.download_settings()["code"]["files"]) == {  # the ones it runs: not digits
        "workflow/ladder/data/tinyimagenet.py",
        "workflow/ladder/data/archive.py",
    }
    files = p.settings_files()
    assert files["selection.json"] == {"experiments": list(TINY_EXPERIMENTS)}
    assert files["experiments/small_shift/evaluate.json"]["passes"] == 2
    assert files["experiments/small_shift/report.json"]["base"] == "small"


def test_duplicate_keys_in_the_file_are_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("experiments:\n  a: {}\n  a: {epochs: 3}\n")
    with pytest.raises(ConfigError, match=r"params.yaml: line 3: duplicate key 'a'"):
        config.load(path)


def test_write_settings_is_byte_identical_for_equal_content(tmp_path):
    p = Params.from_dict(tiny_params())
    first = {
        f.relative_to(tmp_path / "a"): f.read_bytes()
        for f in config.write_settings(p, tmp_path / "a")
    }
    second = {
        f.relative_to(tmp_path / "b"): f.read_bytes()
        for f in config.write_settings(p, tmp_path / "b")
    }
    assert first == second


def test_write_settings_touches_only_changed_files_and_removes_stale_ones(tmp_path):
    params = tiny_params()
    config.write_settings(Params.from_dict(params), tmp_path)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.json")}
    params["experiments"]["small"]["optimizer"]["lr"] = 0.02
    del params["experiments"]["small_shift"]
    written = config.write_settings(Params.from_dict(params), tmp_path)
    # the selection (all experiments) lost one; small's training settings changed
    assert written == [tmp_path / "selection.json", tmp_path / "experiments/small/train.json"]
    assert not (tmp_path / "experiments/small_shift").exists()
    for path, mtime in mtimes.items():
        if path.exists() and path not in written:
            assert path.stat().st_mtime_ns == mtime, path
    assert config.write_settings(Params.from_dict(params), tmp_path) == []


def _walk_schema(node, path="$"):
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for key, sub in props.items():
                yield f"{path}.{key}", sub
        for key, sub in node.items():
            yield from _walk_schema(sub, f"{path}.{key}")
    elif isinstance(node, list):
        for i, sub in enumerate(node):
            yield from _walk_schema(sub, f"{path}[{i}]")


def test_every_schema_key_has_a_description_and_a_default():
    schema = config.schema()
    missing = []
    for path, node in _walk_schema(schema):
        resolved = config._deref(node)
        if "description" not in resolved or "default" not in node:
            missing.append(path)
    assert not missing, missing


def test_relevance_table_names_only_real_keys():
    defs = config.schema()["$defs"]
    for section, table in config.RELEVANT.items():
        assert set(table) == set(defs[section]["properties"]["name"]["enum"])
        for keys in table.values():
            assert set(keys) <= set(defs[section]["properties"])


@pytest.mark.parametrize("name", ["params.yaml", "config/demo.yaml"])
def test_shipped_params_resolve_and_every_key_has_a_comment(name):
    path = REPO / name
    config.load(path)
    lines = path.read_text().splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z0-9_.-]+:", line) and "#" not in line:
            above = lines[i - 1].strip() if i else ""
            if not above.startswith("#"):
                uncommented.append(f"{name}:{i + 1}: {line.strip()}")
    assert not uncommented, "\n".join(uncommented)


def test_seed_ladder_is_complete():
    p = config.load(REPO / "params.yaml")
    seed = [n for n, e in p.experiments.items() if not e.meta["description"].startswith("Ours")]
    assert len(seed) == 25  # rungs 1-25; rung 26 is rung 25's test-picked checkpoint
    assert p.experiments["effnet_final"].meta["reference"]["test_picked"]["epoch"] == 46
    final = p.experiments["effnet_final"].train
    assert final["model"]["shakedrop"] == {"p_drop": 0.5, "stages": [4]}
    assert final["batch_size"] == 32
    assert final["epochs"] == 60
    assert final["schedule"] == {
        "name": "multistep",
        "milestones": [30, 45],
        "gamma": 0.1,
        "warmup_epochs": 0,
    }
    assert yaml.safe_load((REPO / "params.yaml").read_text())["run"] == []


# ----------------------------------------------------------------------------------------------
# Seed replicates (`replicate_of`)

CNN = {"model": {"name": "mynet", "blocks": 1, "width": 8}, "epochs": 3, "tta": {"passes": 2}}


def test_a_seed_replicate_resolves_as_an_experiment_of_its_own():
    p = params({"cnn": CNN, "cnn_s1": {"base": "cnn", "replicate_of": "cnn", "seed": 1}})
    replicate, primary = p.experiments["cnn_s1"], p.experiments["cnn"]
    assert replicate.meta["replicate_of"] == "cnn"
    assert primary.meta["replicate_of"] == ""
    assert replicate.train == {**primary.train, "seed": 1}
    assert replicate.fingerprint != primary.fingerprint  # its own training job and resume state
    assert p.settings_files()["experiments/cnn_s1/report.json"]["replicate_of"] == "cnn"
    # Not inherited: a rung built on a replicate is no replicate.
    child = params({**p.raw["experiments"], "next": {"base": "cnn_s1", "epochs": 4}})
    assert child.experiments["next"].meta["replicate_of"] == ""


@pytest.mark.parametrize(
    ("diff", "message"),
    [
        (
            {"seed": 1, "epochs": 4},
            r"experiments\.cnn_s1\.replicate_of: a seed replicate must train as cnn does except "
            r"for `seed`, but epochs differs \(4 here, 3 in cnn\)",
        ),
        (
            {"seed": 1, "model": {"width": 16}},
            r"cnn_s1\.replicate_of: .* except for `seed`, but model\.width differs "
            r"\(16 here, 8 in cnn\)",
        ),
        (
            {"seed": 1, "tta": {"passes": 5}},
            r"cnn_s1\.replicate_of: a seed replicate must be evaluated as cnn is, but "
            r"tta\.passes differs \(5 here, 2 in cnn\)",
        ),
        (
            {},
            r"cnn_s1\.replicate_of: cnn_s1 has seed 0, as cnn has: a replicate needs a seed of "
            r"its own \(e\.g\. seed: 1\)",
        ),
    ],
    ids=["epochs", "nested-key", "tta", "same-seed"],
)
def test_a_replicate_that_differs_in_more_than_its_seed_is_refused(diff, message):
    with pytest.raises(ConfigError, match=message):
        params({"cnn": CNN, "cnn_s1": {"base": "cnn", "replicate_of": "cnn", **diff}})


def test_two_replicates_with_the_same_seed_are_refused():
    with pytest.raises(ConfigError, match=r"experiments\.b\.replicate_of: b has seed 1, as a has"):
        params(
            {
                "cnn": CNN,
                "a": {"base": "cnn", "replicate_of": "cnn", "seed": 1},
                "b": {"base": "cnn", "replicate_of": "cnn", "seed": 1},
            }
        )


def test_replicate_of_names_an_experiment_that_is_no_replicate_itself():
    with pytest.raises(
        ConfigError,
        match=r"test\.yaml: experiments\.cnn_s1\.replicate_of: unknown experiment 'cn' "
        r"\(did you mean 'cnn'\?\)",
    ):
        params({"cnn": CNN, "cnn_s1": {"base": "cnn", "replicate_of": "cn", "seed": 1}})
    with pytest.raises(ConfigError, match=r"cnn\.replicate_of: an experiment cannot be a replic"):
        params({"cnn": {**CNN, "replicate_of": "cnn"}})
    with pytest.raises(
        ConfigError,
        match=r"cnn_s2\.replicate_of: 'cnn_s1' is itself a replicate of 'cnn'; write "
        r"replicate_of: cnn",
    ):
        params(
            {
                "cnn": CNN,
                "cnn_s1": {"base": "cnn", "replicate_of": "cnn", "seed": 1},
                "cnn_s2": {"base": "cnn", "replicate_of": "cnn_s1", "seed": 2},
            }
        )


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a\n"], "not a valid experiment name"),  # JSON Schema's `$` would let it through
        (["a" * 201], "not a valid experiment name"),
        (["-a"], "not a valid experiment name"),
        (["root", "root.lock"], "may not end in '.lock' (results/resume/root.lock is the training"),
        (["Foo", "foo"], "differs from 'Foo' only in case"),
    ],
)
def test_an_experiment_name_that_cannot_be_a_file_name_is_refused(names, message):
    experiments = {name: {"model": {"name": "mynet"}} for name in names}
    with pytest.raises(ConfigError, match=re.escape(message)):
        Params.from_dict({"experiments": experiments})
    assert Params.from_dict({"experiments": {"a" * 200: {"model": {"name": "mynet"}}}})


def test_a_base_chain_deeper_than_python_s_recursion_limit_resolves_each_rung():
    # Each rung merged once over its base's merged settings (benchmarks/resolution.py: linear).
    experiments = {"r0": {"model": {"name": "mynet", "blocks": 1, "width": 4}, "epochs": 3}}
    for i in range(1, 1500):
        diff = {"optimizer": {"lr": i / 1e4}} if i % 2 else {"seed": i}
        experiments[f"r{i}"] = {"base": f"r{i - 1}", **diff}
    resolved = Params.from_dict({"experiments": experiments}).experiments
    last = resolved["r1499"]
    assert last.chain == tuple(f"r{i}" for i in range(1499, -1, -1))
    assert last.train["optimizer"]["lr"] == 0.1499
    assert last.train["seed"] == 1498
    assert resolved["r2"].train["optimizer"]["lr"] == 0.0001
    assert resolved["r1"].train["seed"] == resolved["r0"].train["seed"]
    assert all(exp.train["epochs"] == 3 for exp in resolved.values())
    # Rungs share no settings object: changing one changes no other.
    resolved["r1"].evaluate["passes"] = 99
    resolved["r1"].train["model"]["width"] = 99
    assert resolved["r2"].evaluate["passes"] != 99
    assert resolved["r2"].train["model"]["width"] == 4
