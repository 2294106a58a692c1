"""The released "HRNet18s" recipe (HRNet-W18 + OCR-48, COCO+LVIS; docs/official_quirks.md #1).

    python -m fcfi_jax.main --config=configs/hrnet18s.py --workdir=runs/h18s \\
        --config.data.manual_dir=/data/cocolvis --config.init_from=/weights/hrnetv2_w18_imagenet_pretrained.pth

reproduces scripts/train_h18s_cocolvis.sh: 320x480 crops, global batch 64, Adam 5e-4, 30000 samples per epoch
(468 steps), 230 epochs with the LR divided by 10 at epochs 200 and 220, up to 3 simulated clicks, feedback
loss weights 0.2, backbone and FCFI modules at 0.1x LR. Checkpoints every 5 epochs, NoC on 100 SBD-val images at
the end (set --config.eval.root=/data/sbd/dataset).

    python -m fcfi_jax.main --config=configs/hrnet18s.py:local

is the same code on a small HRNet and generated data: a few minutes on a laptop CPU, nothing downloaded.
Add --config.data.builder=folder --config.data.manual_dir=DIR to run it on your own images instead
(docs/training.md, "Train on your own images").
"""
from fcfi_jax.training.defaults import base_config, make_local


def get_config(arg: str = ""):
    c = base_config("hrnet18s")
    c.data.builder = "cocolvis_fcfi"
    c.batch_size = 64
    c.num_epochs = 230            # hard-coded in the official script (docs/official_quirks.md #22)
    c.lr_milestones = (200, 220)
    c.feedback_weight = 0.2
    c.eval.dataset = "SBD"
    if arg == "local":
        return make_local(c)
    if arg:
        raise ValueError(f"unknown config argument {arg!r}; use configs/hrnet18s.py or configs/hrnet18s.py:local")
    return c
