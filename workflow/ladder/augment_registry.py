"""The training augmentations, one entry each, in the order they are applied.

ladder.augment's pipeline runs the ops in this order (flip, translate, rotate, blur, solarize, as in
the seed's pipelines; then the automatic policies, RandAugment, TrivialAugmentWide and
AutoAugment, after the geometric ops as in torchvision's reference recipes; then random erasing,
last as in torchvision's and timm's recipes);
ladder.config derives from the entries which settings an op that is off keeps. The schema
(params.schema.yaml) lists the ops and their settings, in this order, for users;
tests/test_registries.py fails when the two disagree. Adding an op: an entry here, its module in
ladder/augments/ (with an `apply`), its settings in the schema. An entry lists the files its op runs
(`code`): an experiment's training and evaluation depend on those of the ops it uses only
(ladder.config.code_record), so adding or editing an op reruns only the experiments that use it;
tests/test_registries.py fails when an op imports a file of the package its entry does not list.

Light on purpose: Snakemake imports ladder.config (hence this module) whenever it loads the
workflow, so nothing here imports torch. An entry names its function ("module:function").
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    name: str  # its key under `augment`
    apply: str  # "module:function(batch, setting, generator) -> batch", the setting as below
    code: tuple[str, ...]  # the files `apply` runs, relative to workflow/ladder/
    settings: tuple[str, ...] = ()  # its keys besides `p`: `augment.<name>.<key>`
    bare: bool = False  # the setting is the probability itself (`augment.hflip: 0.5`)

    def probability(self, augment: Mapping) -> float:
        """How often the op applies, from an experiment's `augment` settings (0: off). An op
        the settings leave out is off: resolution leaves out the ops that are off, so that
        adding an op to this registry changes no existing experiment's settings."""
        setting = augment.get(self.name)
        if setting is None:
            return 0.0
        return setting if self.bare else setting["p"]

    def function(self) -> Callable:
        return pkgutil.resolve_name(self.apply)


_COIN = "augments/common.py"
_AFFINE = "augments/affine.py"
_POLICY_OPS = ("augments/policy_ops.py", _AFFINE, _COIN)  # what the three policies share
OPS: tuple[Op, ...] = (
    Op("hflip", "ladder.augments.hflip:apply", ("augments/hflip.py", _COIN), bare=True),
    Op(
        "translate",
        "ladder.augments.translate:apply",
        ("augments/translate.py", _AFFINE, _COIN),
        settings=("max",),
    ),
    Op(
        "rotate",
        "ladder.augments.rotate:apply",
        ("augments/rotate.py", _AFFINE, _COIN),
        settings=("degrees",),
    ),
    Op(
        "blur",
        "ladder.augments.blur:apply",
        ("augments/blur.py", _COIN),
        settings=("kernel", "sigma"),
    ),
    Op(
        "solarize",
        "ladder.augments.solarize:apply",
        ("augments/solarize.py", _COIN),
        settings=("threshold",),
    ),
    Op(
        "randaugment",
        "ladder.augments.randaugment:apply",
        ("augments/randaugment.py", *_POLICY_OPS),
        settings=("ops", "magnitude", "bins"),
    ),
    Op(
        "trivialaugment",
        "ladder.augments.trivialaugment:apply",
        ("augments/trivialaugment.py", *_POLICY_OPS),
        settings=("bins",),
    ),
    Op(
        "autoaugment",
        "ladder.augments.autoaugment:apply",
        ("augments/autoaugment.py", *_POLICY_OPS),
        settings=("policy",),
    ),
    Op(
        "erase",
        "ladder.augments.erase:apply",
        ("augments/erase.py", _COIN),
        settings=("scale", "ratio", "value"),
    ),
)


# Batch mixing (mixup, CutMix: an experiment's `mix` settings) is not a per-image op: it acts on
# the batch and its labels after the ops. Like an op's, its code is in the code record of the
# experiments that use it only, so adding or editing it reruns no other experiment.
MIXER = "ladder.mixing:Mixer"  # (settings, num_classes) -> the batch transform
MIXER_CODE = ("mixing.py",)


def mixes(mix: Mapping) -> bool:
    """Whether an experiment's `mix` settings mix any batch."""
    return mix.get("p", 0) > 0 and (mix["mixup_alpha"] > 0 or mix["cutmix_alpha"] > 0)
