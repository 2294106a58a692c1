"""Every official state_dict key and shape (the FCFI_KEYS_*.tsv dumps of the instantiated official models) maps onto
exactly one NNX variable."""
import csv

import numpy as np
import pytest

from fcfi_jax.convert.mapping import model_variables, to_flax_layout
from fcfi_jax.models.is_model import build_model

ARCHS = {
    "FCFI_KEYS_h18.tsv": dict(family="hrnet", width=18, ocr_width=48, mid_ch=64, with_aux_output=True,
                              use_leaky_relu=True, expansion_ratio=0.3, use_disks=True, norm_radius=5,
                              with_prev_mask=True),
    "FCFI_KEYS_h18small.tsv": dict(family="hrnet", width=18, ocr_width=48, mid_ch=64, small=True,
                                   with_aux_output=True, use_leaky_relu=True, expansion_ratio=0.3, use_disks=True,
                                   norm_radius=5, with_prev_mask=True),
    "FCFI_KEYS_r101.tsv": dict(family="deeplab", backbone="resnet101", deeplab_ch=256, mid_ch=32, aspp_dropout=0.2,
                               expansion_ratio=0.3, use_leaky_relu=True, use_disks=True, norm_radius=5,
                               with_prev_mask=True),
}


@pytest.mark.parametrize("tsv", sorted(ARCHS))
def test_keys_and_shapes_match_the_official_dump(fixtures_dir, tsv):
    rows = list(csv.DictReader(open(fixtures_dir.parent / "spec" / tsv), delimiter="\t"))
    official = {r["key"]: tuple(int(s) for s in r["shape"].strip("()").split(",") if s.strip())
                for r in rows if not r["key"].endswith("num_batches_tracked")}
    ours = {k: tuple(v.get_value().shape) for k, v in model_variables(build_model(ARCHS[tsv]))}
    assert sorted(set(official) - set(ours)) == [] and sorted(set(ours) - set(official)) == []
    for k, shape in official.items():
        assert to_flax_layout(np.zeros(shape)).shape == ours[k], k
