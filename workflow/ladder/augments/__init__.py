"""The training augmentation ops, one module each (plus the helpers some share), so that an
experiment's training and evaluation depend on the files of the ops it uses only: each entry of
ladder.augment_registry lists its files, and each experiment's code record
(results/configs/code/<exp>.json) their digests.

Every op takes a float batch (N, C, H, W) in [0, 1], its setting (`augment.<op>`) and a generator
on the batch's device, and draws per image from the same distributions as the torchvision
transform its docstring names (tests/test_augment.py compares them statistically).
"""
