"""The released "ResNet-101" recipe (DeepLabV3+ ResNet-101 v1s, SBD; models/iter_mask/r101_dh256_sbd.py).

    python -m fcfi_jax.main --config=configs/r101.py --workdir=runs/r101 \\
        --config.data.manual_dir=/data/sbd/dataset --config.init_from=/weights/resnet101_v1s.pth \\
        --config.eval.root=/data/sbd/dataset

reproduces scripts/train_r101_sbd.sh: 320x480 crops, global batch 24, Adam 5e-4, one epoch = 8498 score-weighted
draws (354 steps), 220 epochs with the LR divided by 10 at epochs 50, 100 and 150, up to 3 simulated clicks,
feedback loss weights 1.0, backbone at 0.1x LR. `:local` runs the DeepLab code path small on generated data
(ResNet-50, 50 steps); for a quick end-to-end run on a laptop use configs/hrnet18s.py:local.
"""
from fcfi_jax.training.defaults import base_config, make_local


def get_config(arg: str = ""):
    c = base_config("r101")
    c.data.builder = "sbd_fcfi"
    if arg == "local":  # the DeepLab code path, small: ResNet-50, batch 4, 50 steps (~5 s/step on 2 CPU cores)
        c = make_local(c)
        c.model.backbone = "resnet50"
        c.batch_size, c.total_steps, c.log_every, c.checkpoint_every_steps = 4, 50, 10, 25
        c.eval.max_samples = 8
        return c
    if arg:
        raise ValueError(f"unknown config argument {arg!r}; use configs/r101.py or configs/r101.py:local")
    return c
