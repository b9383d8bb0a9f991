"""The training augmentations, one entry each, in the order they are applied.

ladder.augment's pipeline runs the ops in this order (flip, translate, rotate, blur, solarize, as
in the seed's pipelines); ladder.config derives from the entries which settings an op that is
off keeps. The schema (params.schema.yaml) lists the ops and their settings, in this order, for
users; tests/test_registries.py fails when the two disagree. Adding an op: an entry here, its
function in ladder.augment, its settings in the schema.

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
    settings: tuple[str, ...] = ()  # its keys besides `p`: `augment.<name>.<key>`
    bare: bool = False  # the setting is the probability itself (`augment.hflip: 0.5`)

    def probability(self, augment: Mapping) -> float:
        """How often the op applies, from an experiment's `augment` settings (0: off)."""
        setting = augment[self.name]
        return setting if self.bare else setting["p"]

    def function(self) -> Callable:
        return pkgutil.resolve_name(self.apply)


OPS: tuple[Op, ...] = (
    Op("hflip", "ladder.augment:apply_hflip", bare=True),
    Op("translate", "ladder.augment:apply_translate", settings=("max",)),
    Op("rotate", "ladder.augment:apply_rotate", settings=("degrees",)),
    Op("blur", "ladder.augment:apply_blur", settings=("kernel", "sigma")),
    Op("solarize", "ladder.augment:apply_solarize", settings=("threshold",)),
)
