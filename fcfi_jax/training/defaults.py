"""Defaults shared by every training config (configs/*.py start from `base_config()` and override).

Every key the trainer reads is defined here, so `--config.some_key=...` on an unknown key fails at parse time
(ml_collections ConfigDicts are locked), and `train.validate_config` rejects bad values before any work.
"""
import ml_collections

from fcfi_jax.models.is_model import RELEASED_ARCHS


def base_config(arch: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(RELEASED_ARCHS[arch]))
    c.init_from = ""          # ImageNet backbone weights, or a whole FCFI model to fine-tune (docs/training.md)
    c.init_format = "auto"    # 'fcfi' | 'hrnet_imagenet' | 'resnet_imagenet' | 'auto' (from the file's content)

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"            # 'tfds' (dataset folders via the TFDS builders) | 'synthetic' | 'auto'
    c.data.builder = "sbd_fcfi"       # 'sbd_fcfi' | 'cocolvis_fcfi' | 'folder' | 'coco_json' (your own images)
    c.data.manual_dir = ""            # the dataset folder (see the builder's error for the layout)
    c.data.val_fraction = 0.1         # folder / coco_json: share of the images held out for evaluation
    c.data.tfds_dir = ""              # or an already prepared TFDS dataset directory
    c.data.tfds_data_dir = ""         # where to prepare it (default: <workdir>/tfds)
    c.data.split = "train"
    c.data.crop_size = (320, 480)
    c.data.num_points = 24
    c.data.epoch_len = 0              # 0: the builder's official preset
    c.data.synthetic_root = ""        # synthetic: folder to generate (default <workdir>/synthetic_sbd)
    c.data.synthetic_train = 200
    c.data.synthetic_val = 50
    c.data.synthetic_size = (96, 128)
    c.data.synthetic_seed = 0

    c.batch_size = 24                 # global, over all devices and hosts
    c.num_epochs = 220
    c.total_steps = 0                 # > 0 overrides num_epochs * steps_per_epoch
    c.lr = 5e-4
    c.lr_milestones = (50, 100, 150)  # epochs (MultiStepLR)
    c.lr_gamma = 0.1
    c.backbone_lr_mult = 0.1
    c.max_num_next_clicks = 3
    c.feedback_weight = 1.0
    c.loss = ml_collections.ConfigDict()
    # 'official': NFL on sigmoid(updated_feedback2), as released (a sigmoid applied to a probability,
    # docs/official_quirks.md #16); 'corrected': BCE on the probability itself (docs/training.md, loss table).
    c.loss.feedback2 = "official"
    c.compute_dtype = "float32"       # 'bfloat16' for GPU/TPU speed (BN statistics and losses stay float32)

    c.log_every = 50
    c.checkpoint_every_epochs = 5
    c.checkpoint_every_steps = 0      # > 0 overrides checkpoint_every_epochs
    c.keep_checkpoints = 3
    c.compilation_cache = True

    c.eval = ml_collections.ConfigDict()
    c.eval.dataset = "SBD"            # any evaluation dataset of fcfi_jax.data.readers
    c.eval.root = ""                  # its folder ('' with synthetic data: the generated val split)
    c.eval.split = "val"
    c.eval.max_samples = 100          # 0: all
    c.eval.n_clicks = 20
    c.eval.every_steps = 0            # 0: only at_start / at_end
    c.eval.at_start = False
    c.eval.at_end = True
    c.eval.zoom_in = (0, 0.0)         # (target, expansion); (0, 0) = off
    c.eval.with_flip = True
    c.eval.canvas_step = 128
    return c


def make_local(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The ':local' variant: a small network on generated data, minutes on a laptop CPU, nothing downloaded."""
    c.model.width, c.model.ocr_width, c.model.mid_ch, c.model.small = 8, 16, 16, True
    c.data.source = "auto"            # generated data, unless data.manual_dir / data.tfds_dir names a dataset
    c.data.crop_size = (96, 128)
    c.data.synthetic_train, c.data.synthetic_val = 256, 24
    c.data.epoch_len = 0
    c.batch_size = 8
    c.num_epochs = 0
    c.total_steps = 300
    c.lr = 1e-3
    c.lr_milestones = ()
    c.backbone_lr_mult = 1.0          # from scratch: no pretrained backbone to protect
    c.log_every = 25
    c.checkpoint_every_steps = 100
    c.eval.max_samples = 24
    c.eval.n_clicks = 10
    c.eval.at_start = True
    c.eval.with_flip = False
    c.eval.canvas_step = 0
    return c
