"""CPU-sized deep linear network (configs/santurkar_dln.py with 256 examples
and 2,000 full-batch steps).

  python -m icsjax.main --config=configs/small_dln.py --workdir=runs/small_dln

Runtime: about 2 min on a 2-core CPU (919 / 615 model-steps/s without / with BN,
benchmarks/study_rate.py, jax 0.10.2).
"""

try:  # installed: the configs ship inside the package
  from icsjax.configs import santurkar_dln
except ImportError:  # a checkout, run from its root
  from configs import santurkar_dln


def get_config():
  c = santurkar_dln.get_config()
  c.regression_train_size = c.regression_test_size = c.batch_size = 256
  c.monitor_size = 256
  c.seeds = 3
  c.steps = 2000
  c.segment_steps = 1000
  c.curvature_every, c.curvature_batch_size = 1000, 256
  return c
