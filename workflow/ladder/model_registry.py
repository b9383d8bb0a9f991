"""The models, one entry each: what `model.*` settings it reads, what it allows, what builds it.

ladder.config derives from these entries which settings apply to a model and which values it
accepts; ladder.models builds a model through its entry. The schema (params.schema.yaml) names
the models and documents their settings for users; tests/test_registries.py fails when the two
disagree. Adding a model: an entry here, its module in ladder/models/ (with a `build`), its name
in the schema. An entry lists the files its builder runs (`code`): an experiment's training and
evaluation depend on those of its own model only (ladder.config.code_record), so adding or
editing a model reruns only the experiments that use it; tests/test_registries.py fails when a
builder imports a file of the package its entry does not list.

Light on purpose: Snakemake imports ladder.config (hence this module) whenever it loads the
workflow, so nothing here imports torch. An entry names its builder ("module:function"), which
is imported only when a model is built.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Model:
    name: str
    settings: tuple[str, ...]  # the `model.*` keys it reads besides `name`; others are dropped
    build: str  # "module:function(settings, num_classes, image_size) -> nn.Module"
    code: tuple[str, ...]  # the files its builder runs, relative to workflow/ladder/
    # The values `model.unstride` may take (when it reads it), and why another one is refused.
    unstride: tuple[int, ...] = ()
    unstride_refusal: str = ""
    shakedrop_stages: range = range(0)  # stages whose residual blocks can carry ShakeDrop

    def builder(self) -> Callable:
        return pkgutil.resolve_name(self.build)


MODELS: dict[str, Model] = {
    m.name: m
    for m in [
        Model(
            name="mynet",
            settings=("blocks", "width", "dropout"),
            build="ladder.models.mynet:build",
            code=("models/mynet.py",),
        ),
        Model(
            name="resnet18",
            settings=("unstride", "maxpool", "dropout", "stochastic_depth", "shakedrop"),
            build="ladder.models.resnet:build",
            code=("models/resnet.py", "models/small_image.py", "models/shakedrop.py"),
            # Its stride-2 convs come in pairs (conv + its shortcut) after the stem: unstriding
            # an odd count after the stem would give the two branches of a block different shapes.
            unstride=(0, 1, 3, 5, 7),
            unstride_refusal="would split a residual block's two branches",
            shakedrop_stages=range(1, 5),  # layer1..layer4
        ),
        Model(
            name="efficientnet_v2_s",
            settings=("unstride", "dropout", "shakedrop"),
            build="ladder.models.efficientnet:build",
            code=("models/efficientnet.py", "models/small_image.py", "models/shakedrop.py"),
            unstride=tuple(range(6)),  # it has five stride-2 convolutions
            unstride_refusal="is more stride-2 convolutions than the model has",
            shakedrop_stages=range(1, 7),  # features[1]..features[6]
        ),
    ]
}
