"""One 'trainable parameters only' optimizer constructor for every trainer (brixel_plugins.engine.optim):
mmengine's paramwise rules, pattern groups (the release recipes), and the check Detectron2 uses."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from brixel_plugins.engine import TrainableOptimWrapperConstructor, check_trainable_only


def model_with_frozen_part() -> nn.Module:
    m = nn.Module()
    m.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).requires_grad_(False)
    m.head = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    return m


def build(paramwise_cfg=None):
    cfg = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.01))
    return TrainableOptimWrapperConstructor(cfg, paramwise_cfg)(model_with_frozen_part())


def held(wrapper):
    return [p for g in wrapper.optimizer.param_groups for p in g["params"]]


@pytest.mark.parametrize("paramwise_cfg", [
    None, dict(norm_decay_mult=0.0), dict(groups=[dict(pattern=r"^head\.1\.", lr=0.5)])],
    ids=["plain", "mmengine-rules", "pattern-groups"])
def test_only_trainable_parameters_reach_the_optimizer(paramwise_cfg):
    wrapper = build(paramwise_cfg)
    assert len(held(wrapper)) == 6 and all(p.requires_grad for p in held(wrapper))  # head: 3 weights + 3 biases
    groups = wrapper.optimizer.param_groups
    if paramwise_cfg and "norm_decay_mult" in paramwise_cfg:  # mmengine's rule still applies to what trains
        assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.0, 0.01, 0.01, 0.01, 0.01]
    if paramwise_cfg and "groups" in paramwise_cfg:
        assert [(len(g["params"]), g["lr"]) for g in groups] == [(4, 1e-3), (2, 0.5)]


def test_groups_do_not_mix_with_mmengine_rules_and_frozen_models_are_refused():
    with pytest.raises(ValueError, match="'groups' cannot be combined"):
        build(dict(groups=[dict(pattern="head")], norm_decay_mult=0.0))
    frozen = model_with_frozen_part().requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that trains"):
        TrainableOptimWrapperConstructor(dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.1)))(frozen)


def test_check_refuses_an_optimizer_holding_a_frozen_parameter():
    m = model_with_frozen_part()
    check_trainable_only(torch.optim.SGD(m.head.parameters(), lr=0.1), m)
    with pytest.raises(ValueError, match="holds 2 frozen parameters"):
        check_trainable_only(torch.optim.SGD([*m.head.parameters(), *m.backbone[1].parameters()], lr=0.1), m)
