"""Command line: run a study config into a workdir.

  python -m icsjax.main --config=configs/default.py --workdir=runs/default
  python -m icsjax.main --config=default --workdir=runs/default   # a shipped config by name
"""

import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from icsjax import config_files
from icsjax import devices
from icsjax import report
from icsjax import runner
from icsjax import study as study_lib
from icsjax.study import ConfigError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Study config: a file, or the name of a "
                                "shipped one (default, configs/default.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for the study's records and metadata.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("report", True, "Write WORKDIR/report/ (figures, report.md, report.html) "
                  "at the end; python -m icsjax.report WORKDIR writes it later.")
flags.mark_flags_as_required(["config", "workdir"])


class OrbaxWarningsOnly(logging.Filter):
  """Orbax logs each checkpoint save at INFO through absl's logger: some 120
  lines a segment, which bury the progress bar and the summary."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or "orbax" not in record.pathname


def main(argv, sweeps=None):
  del argv
  # JAX logs at INFO that it found no TPU; that is not news on a CPU or GPU machine.
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
  logging.getLogger("absl").addFilter(OrbaxWarningsOnly())
  try:
    config_files.add_sweeps(FLAGS.config, sweeps or {})
    study_lib.validate(FLAGS.config)  # before anything else, JAX's start included
    print(devices.split_cpu_host(devices.requested(FLAGS.config.cpu_devices)))
    runner.run(FLAGS.config, FLAGS.workdir, progress=FLAGS.progress)
    if FLAGS.report:
      print(f"report: {report.write(FLAGS.workdir)}")
  except (ConfigError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def run():
  # Before absl parses the flags: the config flag loads its file while parsing.
  try:
    argv, sweeps = config_files.split_sweeps(config_files.resolve_argv(sys.argv))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  # ml_collections reads the --config.* overrides from sys.argv itself.
  sys.argv = argv
  app.run(lambda argv: main(argv, sweeps), argv=argv)


if __name__ == "__main__":
  run()
