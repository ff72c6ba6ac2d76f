"""Default study: Ioffe & Szegedy's MLP on the embedded digits data, CPU, a few minutes.

Three norm variants (none, batchnorm, noisy batchnorm) x two learning rates x
two depths (3, the paper's, and 8) x five seeds = 60 models, 2000 steps, with
batch-statistic records, every probe and the test-time evaluation: enough for
the report to answer all five of its questions.

  python -m icsjax.main --config=configs/default.py --workdir=runs/default

Runtime: 160-252 s wall (the same run at different hours) on a 2-core CPU with everything on (probes, test time,
checkpoints, the report; jax 0.10.2, one XLA device per core). The depth axis
doubled the models, so the steps went from 3000 to 2000 and the curvature
probe got lighter (a probe batch of 128, 20 Lanczos steps, 5 Hutchinson
samples); the test-time evaluation costs per evaluation about 0.2 of a
500-step training segment with the probes (benchmarks/inference_cost.py).

Override any field on the command line, e.g. ``--config.seeds=8`` or
``--config.sweep.lr="(0.05,0.1,0.5)"``.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  # data
  c.dataset = "digits"
  c.data_seed = 0
  c.test_fraction = 0.2
  c.regression_dim = 10
  c.regression_train_size = 1024
  c.regression_test_size = 1024
  c.monitor_size = 256
  c.tfds_data_dir = ""  # TFDS datasets: "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  # model (Ioffe & Szegedy 2015: 3 x 100 sigmoid, norm before each nonlinearity)
  c.arch = "mlp"
  c.width = 100
  c.depth = 3
  c.channels = (16, 32)  # arch="vgg" only
  c.convs_per_stage = 1  # arch="vgg" only
  c.activation = "sigmoid"
  # kernel initialiser of every dense/conv layer: lecun_normal (Flax's default), glorot_uniform,
  # he_normal or orthogonal (docs/measurements.md, "Initialisation")
  c.init = "lecun_normal"
  c.norm = "batchnorm"
  c.norm_eps = 1e-5
  c.lp_center = True
  c.batch_size = 60
  # optimizer and per-model hyperparameters
  c.optimizer = "sgd"
  c.lr = 0.1
  c.init_gain = 1.0  # every initial kernel times this (depth-8 sigmoid MLP: ~10 keeps its signal)
  c.momentum = 0.9
  c.b1 = 0.9
  c.b2 = 0.999
  c.adam_eps = 1e-8
  c.bn_momentum = 0.99
  # noisy BN (Santurkar et al. 2018, sec. 2)
  c.noise_mean_range = 0.5
  c.noise_scale_low = 1.0
  c.noise_scale_high = 1.25
  c.noise_mean_spread = 0.1
  c.noise_scale_std = 0.1
  # the loop
  c.seeds = 5
  c.base_seed = 0
  c.steps = 2000  # 3000 before the depth axis; phases: early t <= 500, late t > 1000
  c.scan_length = 50
  c.record_every = 100
  c.eval_every = 250
  c.segment_steps = 500
  c.tracked_units = (0, 1, 2)
  c.monitor_mode = "train"
  c.eval_batch_chunk = 64
  c.cpu_devices = 0
  # groups differing only in width or depth: one padded compiled program, one
  # program each, or "auto" (the cost model's choice; icsjax/programs.py)
  c.programs = "auto"
  # checkpoints (WORKDIR/checkpoints): a rerun of the same command resumes from the latest
  c.checkpoint_segments = 1
  c.checkpoint_keep = 0
  # SIGTERM (a preemption notice, ~30 s of grace): exit code 75 once the segment in
  # flight is saved, or at once if that would take longer than this (icsjax/preemption.py)
  c.preemption_budget_seconds = 20.0
  # probes (docs/measurements.md: "Gradient-ICS", "Loss landscape along the update",
  # "Curvature"): every cadence a multiple of scan_length; 0 = off
  c.ics_every = 250
  c.landscape_every = 250
  c.landscape_lr_multiples = (0.5, 1.0, 2.0, 4.0)  # Santurkar et al. Fig. 4 (VGG): [0.5, 4] x lr
  c.curvature_every = 500
  c.curvature_batch_size = 128
  c.lanczos_steps = 20
  c.layer_lanczos_steps = 10  # per weight layer: within 2e-5 of 300 steps here
  c.slq_vectors = 1
  c.hutchinson_samples = 5
  c.probe_memory_mb = 0
  # test time (docs/measurements.md, "Test time"): statistics modes by test batch size, shifted test
  # inputs, BN adaptation (Schneider et al. 2020); test_time_every = 0 switches it off
  c.test_time_every = 500
  c.test_batch_sizes = (1, 8, 60)
  c.population_batches = 10  # Ioffe Alg. 2: training minibatches of batch_size
  # also "brightness" and "scale_shift" (icsjax/shifts.py); left out here for runtime
  c.shift_corruptions = ("gaussian_noise", "contrast", "blur", "mean_shift")
  c.shift_severities = (2, 5)  # 1..5, CIFAR-10-C strengths
  c.tfds_corruptions = ()  # dataset="cifar10": e.g. ("fog", "snow") from TFDS cifar10_corrupted
  c.adapt_sizes = (16,)  # n; () evaluates no shifts
  c.adapt_priors = (0.0, 16.0)  # N; 0 = full adaptation
  c.adapt_set = "test_batch"  # or "separate": n shifted training examples
  # the grid
  c.sweep = ml_collections.ConfigDict()
  c.sweep.norm = ("none", "batchnorm", "noisy_batchnorm")
  c.sweep.lr = (0.1, 0.5)
  c.sweep.depth = (3, 8)  # question 3: does depth amplify the shift and its effect?
  return c
