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
    # The values `model.unstride` may take (when it reads it; models/small_image.py says what
    # they do), and why one in between is refused.
    unstride: tuple[int, ...] = ()
    unstride_refusal: str = ""
    shakedrop_stages: range = range(0)  # stages whose residual blocks can carry ShakeDrop

    def builder(self) -> Callable:
        return pkgutil.resolve_name(self.build)

    def unstride_refused(self, n: int) -> str:
        """Why `model.unstride: n` is refused (n not in `unstride`)."""
        return _TOO_MANY if n > max(self.unstride, default=0) else self.unstride_refusal


_RESNET_CODE = ("models/resnet.py", "models/small_image.py", "models/shakedrop.py")
_SPLITS_A_BLOCK = "would split a residual block's two branches"
_TOO_MANY = "is more halvings of resolution than the model has"

MODELS: dict[str, Model] = {
    m.name: m
    for m in [
        Model(
            name="mynet",
            settings=("blocks", "width", "dropout"),
            build="ladder.models.mynet:build",
            code=("models/mynet.py",),
        ),
        *(
            Model(
                name=name,
                settings=("unstride", "maxpool", "dropout", "stochastic_depth", "shakedrop"),
                build="ladder.models.resnet:build",
                code=_RESNET_CODE,
                # After the stem, each stage's first block strides twice, in its main branch
                # and in its shortcut: unstriding an odd count after the stem would give the
                # block's two branches different shapes.
                unstride=(0, 1, 3, 5, 7),
                unstride_refusal=_SPLITS_A_BLOCK,
                shakedrop_stages=range(1, 5),  # layer1..layer4
            )
            for name in (
                "resnet18",
                "resnet34",
                "resnet50",
                "wide_resnet50_2",
                "resnext50_32x4d",
            )
        ),
        Model(
            name="efficientnet_v2_s",
            settings=("unstride", "dropout", "shakedrop"),
            build="ladder.models.efficientnet:build",
            code=("models/efficientnet.py", "models/small_image.py", "models/shakedrop.py"),
            unstride=tuple(range(6)),  # it has five stride-2 convolutions
            unstride_refusal=_TOO_MANY,
            shakedrop_stages=range(1, 7),  # features[1]..features[6]
        ),
        *(
            Model(
                name=name,
                settings=("unstride", "dropout"),
                build="ladder.models.regnet:build",
                code=("models/regnet.py", "models/small_image.py"),
                # A stride-2 stem, then pairs as in the ResNets (shortcut and 3x3 conv).
                unstride=(0, 1, 3, 5, 7, 9),
                unstride_refusal=_SPLITS_A_BLOCK,
            )
            for name in ("regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf")
        ),
        *(
            Model(
                name=name,
                settings=("unstride", "dropout"),
                build="ladder.models.mobilenet:build",
                code=("models/mobilenet.py", "models/small_image.py"),
                unstride=tuple(range(6)),  # five stride-2 convolutions, none in a residual block
                unstride_refusal=_TOO_MANY,
            )
            for name in ("mobilenet_v3_small", "mobilenet_v3_large")
        ),
        Model(
            name="convnext_tiny",
            settings=("unstride", "dropout", "stochastic_depth"),
            build="ladder.models.convnext:build",
            code=("models/convnext.py", "models/small_image.py"),
            # Five halvings: the 4x4 stride-4 stem (two), three 2x2 stride-2 downsamplings.
            unstride=tuple(range(6)),
            unstride_refusal=_TOO_MANY,
        ),
    ]
}
