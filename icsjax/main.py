"""Command line: run a study config into a workdir.

  python -m icsjax.main --config=configs/default.py --workdir=runs/default
  python -m icsjax.main --config=default --workdir=runs/default   # a shipped config by name
  python -m icsjax.main --config=... --workdir=STUDY/shard-0-of-2 --groups=NAME,NAME  # a shard

Exit codes (README, "Exit codes"): 0 the study is done; 2 a mistake in the
command line, the config or the workdir (one line on stderr says which), or
the workdir is in use by another run; 3 the workdir could not be written (a
write failed, or its filesystem has too little free space: one line names the
path and the OS error; rerunning the same command resumes); 130 interrupted
(Ctrl-C; rerunning the same command resumes); 75 preempted (SIGTERM: the
segment in flight was saved, or the last intact checkpoint kept; rerunning
the same command resumes; icsjax/preemption.py says why 75); 4 (several
processes) another process of the run stopped (rerunning on every host
resumes); 1 anything else, which is a bug (with its traceback). Several
processes (``--num_processes``, or a cluster JAX detects): README, "Many hosts".
``--debug`` (or ICSJAX_DEBUG=1) shows the traceback behind a refusal too.

Only light modules are imported at the top, so that a mistake is reported at
once and Ctrl-C and SIGTERM are handled from the start; JAX is imported inside
`main`.
"""

import contextlib
import logging
import os
import shlex
import signal
import sys
import traceback

from absl import app
from absl import flags
from ml_collections import config_flags

from icsjax import config_files
from icsjax import hosts
from icsjax import interrupt
from icsjax import preemption
from icsjax import store
from icsjax import tfds_data
from icsjax import workdir_lock
from icsjax import write_errors
from icsjax.fields import ConfigError

DONE, USER_ERROR, NOT_WRITTEN, INTERRUPTED, PREEMPTED = (
    0, 2, write_errors.EXIT_CODE, interrupt.EXIT_CODE, preemption.EXIT_CODE)
PEER_LOST = hosts.EXIT_CODE
# What a user can get wrong; anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, config_files.CommandLineError, flags.Error, FileExistsError,
               workdir_lock.WorkdirError, tfds_data.DatasetNotPreparedError)
DEBUG_ENV = "ICSJAX_DEBUG"

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Study config: a file, or the name of a "
                                "shipped one (default, configs/default.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for the study's records and metadata.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("report", True, "Write WORKDIR/report/ (figures, report.md, report.html) "
                  "at the end; python -m icsjax.report WORKDIR writes it later.")
flags.DEFINE_bool("tensorboard", True, "Write each segment's live metrics under "
                  "WORKDIR/tensorboard/ for `tensorboard --logdir WORKDIR/tensorboard`.")
flags.DEFINE_list("groups", None, "Run only these groups of the study (NAME,NAME: a shard "
                  "of it, icsjax/shards.py); the workdir keeps them, and a rerun must name "
                  "the same.")
flags.DEFINE_bool("debug", False, f"Show the traceback of a refused run (also {DEBUG_ENV}=1).")
flags.DEFINE_integer("num_processes", None, "Processes of one run over many hosts (the same "
                     "command on each, with its own --process_id); unset: one process, or as "
                     "many as a cluster JAX detects (TPU VM slice, SLURM) holds.")
flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes-1; "
                     "process 0 writes the workdir.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, where JAX's "
                    "coordination service listens; the same on every process.")
flags.DEFINE_integer("heartbeat_timeout", hosts.HEARTBEAT_SECONDS, "Seconds after which the "
                     "processes of a run give up on one that stopped answering, and end.")
flags.mark_flags_as_required(["config", "workdir"])


class QuietLibraries(logging.Filter):
  """Orbax logs each checkpoint save at INFO through absl's logger: some 120
  lines a segment, which bury the progress bar and the summary; a save that
  fails it logs at ERROR with tracebacks from each of its threads, where
  icsjax reports the failure in one line (--debug shows them). TFDS warns
  about folders it looks in, even when the dataset then turns out not to be
  prepared, which icsjax reports in one line of its own."""

  def __init__(self, debug: bool = False):
    super().__init__()
    self.debug = debug

  def filter(self, record):
    if "orbax" in record.pathname and "read only" in record.getMessage().replace("_", " "):
      return False  # the managers of processes other than 0 only read, by design
    if "orbax" in record.pathname:
      return record.levelno >= logging.WARNING and (self.debug or record.levelno < logging.ERROR)
    if "tensorflow_datasets" in record.pathname:
      return record.levelno >= logging.ERROR
    return True


def main(argv, sweeps=None, stop: preemption.Stop | None = None):
  del argv
  # A bucket workdir's filesystem (gcsfs, fsspec) logs each file it opens at INFO,
  # which absl's handler would print; their warnings and errors still show.
  for name in ("fsspec", "gcsfs"):
    logging.getLogger(name).setLevel(logging.WARNING)
  plan = hosts.plan(FLAGS.num_processes, FLAGS.process_id, FLAGS.coordinator_address,
                    FLAGS.heartbeat_timeout,
                    hosts.detected_cluster() if FLAGS.num_processes is None else None)
  # Several processes: JAX's distributed runtime first (before any backend), and
  # process 0 alone locks and writes the workdir.
  process, processes = hosts.start(plan)
  primary = process == 0
  ran_by = f"process {process} of {processes}"
  # First of all, before JAX loads (seconds): a second run on a workdir is refused
  # at once. Through the report, which is the run's too. A workdir the lock
  # created is removed again if the run is refused before writing to it.
  with workdir_lock.hold(FLAGS.workdir) if primary else contextlib.nullcontext():
    config_files.add_sweeps(FLAGS.config, sweeps or {})
    store.check_workdir(FLAGS.workdir, FLAGS.config.to_json())  # another study's: refused
    from icsjax import devices
    from icsjax import runner
    from icsjax import study as study_lib
    # JAX logs at INFO that it found no TPU; that is not news on a CPU or GPU machine.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    logging.getLogger("absl").addFilter(QuietLibraries(debug_requested(sys.argv)))
    study_lib.validate(FLAGS.config)  # before anything else, JAX's start included
    split = devices.split_cpu_host(devices.requested(FLAGS.config.cpu_devices))
    print(split if plan is None else f"{ran_by}: {split}")
    # A checkpoint save fails in a background thread: the run ends there, at once.
    runner.run(FLAGS.config, FLAGS.workdir, progress=FLAGS.progress,
               log=print if primary else lambda line: print(f"{ran_by}: {line}"),
               on_write_failure=write_errors.exit_at_once,
               stop=stop if processes == 1 else preemption.AtSyncPoint(stop.command),
               tensorboard=FLAGS.tensorboard, groups=FLAGS.groups)
    if FLAGS.report and primary:
      from icsjax import report  # a second of imports (matplotlib, xarray) a run needs not
      print(f"report: {report.write(FLAGS.workdir)}")
  return DONE


def debug_requested(argv) -> bool:
  if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
    return True
  on = {f"{dash}debug{value}" for dash in ("-", "--") for value in ("", "=true", "=1")}
  return any(a in on for a in argv[1:])


def parse_flags(argv):
  """absl's parsing, with its errors raised for `run` to report in one line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    text = (str(e).strip().splitlines() or ["bad flags"])[0]
    raise config_files.CommandLineError(
        f"{text} (python -m icsjax.main --helpfull lists the flags)") from e


def rerun_command(argv) -> str:
  return shlex.join(["python", "-m", "icsjax.main", *argv[1:]])


def resume_line(argv) -> str:
  return (f"interrupted: the workdir keeps its last intact checkpoint; rerun the same "
          f"command to resume from it: {rerun_command(argv)}")


def run():
  original = list(sys.argv)
  debug = debug_requested(original)
  stop = preemption.OnSigterm(rerun_command(original))
  interrupt.listen({signal.SIGINT: lambda: interrupt.end_process(resume_line(original),
                                                                 INTERRUPTED),
                    signal.SIGTERM: stop.notice})
  try:
    # Before absl parses the flags: the config flag loads its file while parsing,
    # and ml_collections reads the --config.* overrides from sys.argv itself.
    argv, sweeps = config_files.split_sweeps(config_files.resolve_argv(original))
    arg = config_files.config_arg(argv)
    if arg is not None:
      config = config_files.load(arg)
      config_files.check_overrides(argv, config)
      argv = config_files.last_overrides(argv, config)
    sys.argv = argv
    app.run(lambda argv: main(argv, sweeps, stop), argv=argv, flags_parser=parse_flags)
  except USER_ERRORS as e:
    if debug:
      traceback.print_exc()
    print("error: " + " ".join(str(e).split("\n")), file=sys.stderr)
    hosts.exit(USER_ERROR)
  except write_errors.WriteFailed as e:
    if debug:
      traceback.print_exc()
    write_errors.exit_at_once(e)  # not sys.exit: a save in flight may still hold a thread
  except preemption.Preempted as e:
    if hosts.joined():  # every process stopped at the same boundary
      print(preemption.stopped_line(e, stop.command), file=sys.stderr)
      hosts.exit(PREEMPTED)
    interrupt.end_process(preemption.stopped_line(e, stop.command), PREEMPTED)
  except BaseException as e:  # a bug; or absl's exit, 0 when the study is done
    if not hosts.joined() or (isinstance(e, SystemExit) and not e.code):
      raise
    if hosts.peer_lost(e):
      if debug:
        traceback.print_exc()
      print(hosts.lost_line(e, shlex.join(["python", "-m", "icsjax.main", *original[1:]])),
            file=sys.stderr)
      hosts.exit(PEER_LOST)
    traceback.print_exc()
    hosts.exit(e.code if isinstance(e, SystemExit) else 1)


if __name__ == "__main__":
  run()
