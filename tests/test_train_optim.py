"""Optimizer (training/optim.py): official LR-multiplier groups and torch.optim.Adam equivalence."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fcfi_jax.models.is_model import RELEASED_ARCHS, build_model
from fcfi_jax.training.optim import lr_multiplier, lr_multipliers, make_optimizer


@pytest.mark.parametrize("key,family,mult", [
    ("maps_transform.0.weight", "hrnet", 1.0),
    ("maps_transform.3.scale", "hrnet", 1.0),
    ("feature_extractor.conv1.weight", "hrnet", 0.1),
    ("feature_extractor.stage3.0.branches.0.0.conv1.weight", "hrnet", 0.1),
    ("feature_extractor.correction_module.conv1.0.weight", "hrnet", 0.1),   # FFCM (docs/official_quirks.md #18)
    ("feature_extractor.fusion_module.fuse_conv.0.weight", "hrnet", 0.1),   # CFFM
    ("feature_extractor.cls_head.weight", "hrnet", 0.1),
    ("feature_extractor.aux_head.0.weight", "hrnet", 0.1),
    ("feature_extractor.conv3x3_ocr.0.weight", "hrnet", 1.0),
    ("feature_extractor.ocr_distri_head.object_context_block.f_pixel.0.weight", "hrnet", 1.0),
    ("feature_extractor.backbone.layer3.0.conv1.weight", "deeplab", 0.1),
    ("feature_extractor.aspp.project.0.weight", "deeplab", 1.0),
    ("feature_extractor.correction_module.conv1.0.weight", "deeplab", 1.0),
    ("head.layers.2.weight", "deeplab", 1.0),
])
def test_lr_multiplier_groups(key, family, mult):
    assert lr_multiplier(key, family) == mult


def test_every_parameter_gets_a_multiplier():
    model = build_model(dict(RELEASED_ARCHS["hrnet18s"], width=8, ocr_width=16, mid_ch=16, small=True))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    mults = lr_multipliers(params, "hrnet")
    assert jax.tree.structure(mults) == jax.tree.structure(params)
    values = sorted({float(v) for v in jax.tree.leaves(mults)})
    assert values == [np.float32(0.1), 1.0]


def test_matches_torch_adam_param_groups():
    """Three Adam steps with a milestone in between equal torch.optim.Adam + MultiStepLR with lr_mult groups."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    paths = {("maps_transform", "weight"): (3, 4), ("feature_extractor", "conv1", "weight"): (5,),
             ("feature_extractor", "conv3x3_ocr", "weight"): (2, 2)}
    mult = {("maps_transform", "weight"): 1.0, ("feature_extractor", "conv1", "weight"): 0.1,
            ("feature_extractor", "conv3x3_ocr", "weight"): 1.0}

    def tree(values):
        out = {}
        for path, v in values.items():
            d = out
            for k in path[:-1]:
                d = d.setdefault(k, {})
            d[path[-1]] = v
        return out

    def leaf(t, path):
        for k in path:
            t = t[k]
        return np.asarray(t)

    init = {p: rng.standard_normal(s).astype(np.float32) for p, s in paths.items()}
    grads = [{p: rng.standard_normal(s).astype(np.float32) for p, s in paths.items()} for _ in range(3)]
    # steps_per_epoch=1, milestone at epoch 2: lr 1e-2, 1e-2, 1e-3
    tx, schedule = make_optimizer(tree(init), "hrnet", 1e-2, steps_per_epoch=1, milestones=(2,), gamma=0.1)
    params = jax.tree.map(jnp.asarray, tree(init))
    opt = tx.init(params)
    for g in grads:
        updates, opt = tx.update(tree(g), opt, params)
        params = optax.apply_updates(params, updates)

    tparams = {p: torch.nn.Parameter(torch.tensor(v)) for p, v in init.items()}
    opt_t = torch.optim.Adam([{"params": [t], "lr": 1e-2 * mult[p]} for p, t in tparams.items()], lr=1e-2,
                             betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt_t, milestones=[2], gamma=0.1)
    for g in grads:
        for p, t in tparams.items():
            t.grad = torch.tensor(g[p])
        opt_t.step()
        sched.step()
    for p, t in tparams.items():
        np.testing.assert_allclose(leaf(params, p), t.detach().numpy(), rtol=1e-6, atol=1e-7, err_msg=str(p))
    assert np.isclose(float(schedule(0)), 1e-2) and np.isclose(float(schedule(2)), 1e-3)
