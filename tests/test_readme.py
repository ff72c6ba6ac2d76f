"""Every command and Python snippet in README.md runs, at smoke size.

The README is parsed, not copied: a block added to it is run here, or this
file fails until the block is listed as excluded (with the reason) or given a
check of its own.

What counts as what:

- A *block* is a fenced block (```info ... ```) or an indented one (lines
  indented by 4 spaces or more, after a blank line, outside fences).
- A block is *Python* when it is fenced as ```python, or is indented, parses
  as Python (`ast.parse`) and holds a statement that does something (an
  assignment, an import, a call): shell lines, directory listings and sample
  output do not parse, and a bare path or name does nothing.
- Every other block is shell: its lines are joined over trailing `\\` and split
  at `&&` into *commands*. A command that starts with `python -m icsjax` runs;
  every other one must be listed in EXCLUDED. A shell block with no icsjax
  command (sample output, a file listing, the TFDS preparation) is handled as
  a whole: by a check in CHECKED_BLOCKS, or by EXCLUDED.
- Inline code spans count too where they are things to type or things the
  program prints: a span `python -m icsjax.X ARGS...` runs (the module's name
  alone only names the program); a span starting with another command word
  (python, pip, tfds, gsutil, export) must be in EXCLUDED; a span starting
  with `error:`, `interrupted:` or `preempted:` quotes a message, and each one is checked
  against what the program prints (MESSAGES).

Smoke size. `python -m icsjax.main` commands get SMOKE's `--config.*`
overrides appended for every field the command does not set itself (the
README's own values are what the command shows, so they stay), plus
`--noprogress --noreport` (the report is written once, by the README's own
`python -m icsjax.report WORKDIR`). SMOKE keeps the default study's grid (three
variants, two learning rates, two depths, so that a selection must name a
depth as in the full study) and every record kind but curvature on, and
shrinks everything else to 20 steps; SMOKE_EXTRA shrinks a command whose
point is only its own overrides to one group. The README's `runs/default`
(and `WORKDIR`) is one smoke workdir, made once by the module fixture with the
README's default-study command; snippets run against it with
SNIPPET_SUBSTITUTIONS applied.
"""

import ast
import dataclasses
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import types

import numpy as np
import pytest

from conftest import ROOT
from conftest import tiny_config
from icsjax import main as main_lib
from icsjax import runner
from icsjax import workdir_lock

README = pathlib.Path(ROOT) / "README.md"
DEFAULT_STUDY = "python -m icsjax.main --config=configs/default.py --workdir=runs/default"
SMOKE_WORKDIR = "runs/default"  # the README's name of the default study's workdir

# The default study's shape at smoke size, for every field a README command does not
# set itself. The grid keeps its three norms and two learning rates, and its depths
# become (1, 3): two, as in the default's (3, 8), so that a snippet's selection must
# name one, and 3 among them. Every record kind stays on at its smallest cadence but
# curvature, whose compilation would triple the time of every group (tests/
# test_answers.py runs the default study with it, tests/test_curvature.py checks
# it). One CPU device: at 20 steps, compiling for two costs more than it saves.
SMOKE = {
    "width": "8", "seeds": "2", "batch_size": "16", "monitor_size": "32",
    "tracked_units": "(0,3)", "steps": "20", "scan_length": "10", "segment_steps": "10",
    "record_every": "10", "eval_every": "10", "ics_every": "10", "landscape_every": "10",
    "curvature_every": "0", "test_time_every": "10", "population_batches": "2",
    "test_batch_sizes": "(1,8)", "shift_corruptions": "('gaussian_noise',)",
    "shift_severities": "(2,)", "sweep.depth": "(1,3)", "cpu_devices": "1",
}
SMOKE_FLAGS = ("--noprogress", "--noreport")
# Commands whose point is their own overrides, not the default study's grid: one
# compiled group without probes shows that they run.
SMOKE_EXTRA = {
    "--workdir=runs/wide": {"sweep.norm": "(batchnorm,)", "sweep.depth": "(1,)",
                            "ics_every": "0", "landscape_every": "0", "test_time_every": "0"},
}
# Applied to every snippet, in order; each must apply to at least one snippet.
SNIPPET_SUBSTITUTIONS = (
    ('"runs/default"', None),  # None: the smoke workdir, quoted
    ("step=1500", "step=10"),  # a checkpoint before the last, as 1500 is of the default's 3000
)

# Not run, each with why. A key is a substring naming README items (whole lines of
# a shell block, whole blocks, inline spans) that are identical to one another.
EXCLUDED = {
    "pip install -r requirements.txt":
        "installs the checkout and the test tools into the environment running these tests",
    "pip install .": "installs the package (the install is tests/test_packaging.py's)",
    "pip install -e .": "installs the package (the install is tests/test_packaging.py's)",
    "python -m pytest -q tests": "the test suite, this file included",
    "tfds build mnist fashion_mnist cifar10":
        "installs TensorFlow and downloads datasets: needs the network (tests/test_tfds_data.py "
        "reads ArrayRecord files it prepares locally)",
    "tfds build cifar10_corrupted": "downloads CIFAR-10-C: needs the network",
    "gsutil -m cp": "copies to a GCS bucket: needs the network and credentials",
    "export TFDS_DATA_DIR=gs://": "points at a GCS bucket: needs the network and credentials",
    "pip install gcsfs": "installs a package from the network",
    "sky check gcp":
        "needs a Google Cloud account: installs SkyPilot, checks the project's credentials, "
        "creates a bucket and submits a data job (tests/test_launch.py checks its task offline)",
    "configs/bjorck_lr_sweep.py --bucket":
        "submits managed jobs to Google Cloud: needs an account (tests/test_launch.py checks "
        "what they would submit, the submission replaced by a recorder)",
    "python -m launch.tpu status":
        "talks to SkyPilot's API server and Google Cloud: needs an account (tests/test_launch.py "
        "checks fetch's command)",
    "gcloud compute tpus tpu-vm create": "creates a TPU VM: needs a Google Cloud account and quota",
    "gcloud compute tpus tpu-vm ssh NAME --worker=all": "runs a study on every host of a TPU VM slice, or as a "
        "SLURM job (srun): needs one (tests/test_multihost.py runs 2 processes on this machine)",
    "python benchmarks/study_rate.py":
        "a benchmark of a paper config (minutes to hours; `--config=...` is a placeholder)",
}
# Blocks that are neither commands nor Python, each checked by the named test.
CHECKED_BLOCKS = {
    "variant          depth  lr   seeds": "test_summary_table_sample",
    "WORKDIR/config.json": "test_workdir_listing",
    "# icsjax/records/kernel_norms.py": "test_adding_a_measurement",
    "--accelerator=tpu-v5litepod-8 --spot --dry-run": "test_launch.py::test_readme_dry_run",
}
# Snippets that must run in a fresh process, with the check that follows them there.
FRESH_PROCESS = {
    # Must run before JAX starts its backend, which pytest's process has long done.
    'jax.config.update("jax_num_cpu_devices", 8)': "assert jax.device_count() == 8, jax.devices()",
}
# Messages the README quotes, each checked by the named test.
MESSAGES = {
    "error: config.record_every=30": "test_refused_config_message",
    "error: --workdir=runs/default is in use by another run": "test_workdir_in_use_message",
    "interrupted: the workdir keeps its last intact checkpoint": "test_interrupted_message",
    "error: could not write": "test_write_failure_message",
    "preempted: saved a checkpoint": "test_preempted_message",
}
MESSAGE_PREFIXES = ("error:", "interrupted:", "preempted:")
COMMAND_WORDS = ("python", "pip", "tfds", "gsutil", "export")


# --- parsing ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
  line: int  # of its first line in README.md, from 1
  text: str  # dedented
  info: str | None  # a fenced block's info string ("python", ""); None: indented


def blocks(markdown: str) -> list[Block]:
  lines = markdown.splitlines()
  out, i = [], 0
  while i < len(lines):
    fence = re.match(r"^(```+)\s*(\S*)", lines[i])
    if fence:
      end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1)))
      out.append(Block(i + 2, "\n".join(lines[i + 1:end]) + "\n", fence.group(2)))
      i = end + 1
    elif lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
      j = i
      while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
        j += 1
      while not lines[j - 1].strip():
        j -= 1
      out.append(Block(i + 1, "\n".join(l[4:] for l in lines[i:j]) + "\n", None))
      i = j
    else:
      i += 1
  return out


def is_python(block: Block) -> bool:
  if block.info is not None:
    return block.info == "python"
  try:
    tree = ast.parse(block.text)
  except SyntaxError:
    return False
  acts = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Import, ast.ImportFrom)
  return any(isinstance(n, acts) or isinstance(n, ast.Call) for n in ast.walk(tree))


def shell_commands(text: str) -> list[str]:
  joined = re.sub(r"\s*\\\n\s*", " ", text)
  return [c.strip() for line in joined.splitlines() for c in line.split("&&") if c.strip()]


def inline_spans(markdown: str) -> list[str]:
  """Code spans outside blocks, whitespace collapsed (a span may break across lines)."""
  prose = "\n".join(
      line for line in re.sub(r"```.*?```", "", markdown, flags=re.S).splitlines()
      if not line.startswith("    "))
  return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", prose)]


def is_icsjax_command(text: str) -> bool:
  return text.startswith("python -m icsjax") and len(text.split()) > 3


@dataclasses.dataclass(frozen=True)
class Items:
  commands: list[str]  # python -m icsjax ..., from blocks and inline spans
  snippets: list[Block]
  other: list[str]  # everything else that must be excluded or checked
  messages: list[str]


def readme_items() -> Items:
  markdown = README.read_text()
  commands, snippets, other = [], [], []
  for b in blocks(markdown):
    if is_python(b):
      snippets.append(b)
      continue
    parts = shell_commands(b.text)
    if any(is_icsjax_command(p) for p in parts):
      commands += [p for p in parts if is_icsjax_command(p)]
      other += [p for p in parts if not is_icsjax_command(p)]
    else:
      other.append(b.text)
  spans = inline_spans(markdown)
  commands += [s for s in spans if is_icsjax_command(s)]
  other += [s for s in spans
            if s.split()[0] in COMMAND_WORDS and not s.startswith("python -m icsjax")]
  messages = [s for s in spans if s.startswith(MESSAGE_PREFIXES)]
  return Items(commands, snippets, other, messages)


ITEMS = readme_items()


def matching(keys, text: str) -> list[str]:
  return [k for k in keys if k in text]


def test_every_readme_item_is_run_checked_or_excluded():
  for key in (*EXCLUDED, *CHECKED_BLOCKS):
    hits = {t for t in ITEMS.other + [b.text for b in ITEMS.snippets] if key in t}
    assert len(hits) == 1, f"{key!r} must name one README item; it names {len(hits)}"
  for text in ITEMS.other:
    assert len(matching((*EXCLUDED, *CHECKED_BLOCKS), text)) == 1, (
        f"README item neither run nor excluded (add it to EXCLUDED with the reason, or "
        f"check it): {text!r}")
  for b in ITEMS.snippets:
    assert len(matching(CHECKED_BLOCKS, b.text)) + len(matching(FRESH_PROCESS, b.text)) <= 1
  for key in FRESH_PROCESS:
    assert sum(key in b.text for b in ITEMS.snippets) == 1, key
  for message in ITEMS.messages:
    assert len(matching(MESSAGES, message)) == 1, f"README message not checked: {message!r}"
  for key in MESSAGES:
    assert sum(key in m for m in ITEMS.messages) == 1, key
  assert DEFAULT_STUDY in ITEMS.commands
  assert all(sum(old in b.text for b in ITEMS.snippets) for old, _ in SNIPPET_SUBSTITUTIONS)
  assert all(sum(key in c for c in ITEMS.commands) == 1 for key in SMOKE_EXTRA)


def test_the_parser_finds_what_the_readme_shows():
  """The rules above, on a README of each kind of block, so that a parsing slip
  cannot quietly leave blocks out."""
  text = ("intro\n\n    pip install x && python -m icsjax.main --a=1 \\\n        --b=2\n\n"
          "```python\nimport os\n```\n\n    ds = f(1)\n    y = ds\n\n"
          "prose `python -m icsjax.report\nW` and `python -m icsjax.main`\n\n"
          "    WORKDIR/a.json   b.json\n    runs/x\n")
  bs = blocks(text)
  assert [(b.line, b.info) for b in bs] == [(3, None), (7, "python"), (10, None), (16, None)]
  assert [is_python(b) for b in bs] == [False, True, True, False]
  assert not is_python(Block(1, "runs/default\n", None))  # parses, but does nothing
  assert shell_commands(bs[0].text) == ["pip install x", "python -m icsjax.main --a=1 --b=2"]
  assert [s for s in inline_spans(text) if is_icsjax_command(s)] == ["python -m icsjax.report W"]


# --- commands --------------------------------------------------------------------------


def environment() -> dict:
  # The tests' compile settings (conftest): unoptimised programs compile fast.
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1",
              PYTHONPATH=ROOT)


def smoke_argv(command: str, workdirs: dict, tmp_path) -> list[str]:
  """The command as a user's shell splits it, its workdirs redirected and the
  smoke overrides appended."""
  argv = shlex.split(command)
  extra = {}
  for key, more in SMOKE_EXTRA.items():
    if key in command:
      extra.update(more)

  def place(path: str) -> str:
    return str(workdirs.get(path, tmp_path / pathlib.Path(path).name))

  out = []
  for a in argv:
    if a.startswith("--workdir="):
      a = "--workdir=" + place(a.split("=", 1)[1])
    elif a in workdirs:  # a positional WORKDIR
      a = place(a)
    out.append(a)
  if argv[2] != "icsjax.main":
    return [sys.executable, *out[1:]]
  given = {a.split("=", 1)[0][len("--config."):] for a in argv if a.startswith("--config.")}
  smoke = [f"--config.{k}={v}" for k, v in {**SMOKE, **extra}.items() if k not in given]
  return [sys.executable, *out[1:], *smoke, *SMOKE_FLAGS]


def run(argv, timeout=900) -> subprocess.CompletedProcess:
  return subprocess.run(argv, cwd=ROOT, env=environment(), capture_output=True, text=True,
                        timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  """The README's default study at smoke size: its workdir and the run's output."""
  workdir = tmp_path_factory.mktemp("readme") / "default"
  out = run(smoke_argv(DEFAULT_STUDY, {SMOKE_WORKDIR: workdir}, workdir.parent))
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, out


def shared(test):
  """Tests on the smoke workdir: one worker (pytest -n) makes it once, first."""
  return pytest.mark.slow(pytest.mark.xdist_group("readme")(test))


@shared
@pytest.mark.parametrize("command", ITEMS.commands)
def test_readme_command(command, smoke, tmp_path):
  workdir, first = smoke
  if command == DEFAULT_STUDY:  # the fixture's run
    out = first
  else:
    out = run(smoke_argv(command, {SMOKE_WORKDIR: workdir, "WORKDIR": workdir}, tmp_path))
  assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
  if "icsjax.main" in command:
    assert "variant" in out.stdout and "seeds" in out.stdout  # the summary table
  if "icsjax.report" in command:
    assert (workdir / "report" / "report.html").is_file()


# --- snippets --------------------------------------------------------------------------


def substituted(text: str, workdir) -> str:
  for old, new in SNIPPET_SUBSTITUTIONS:
    text = text.replace(old, json.dumps(str(workdir)) if new is None else new)
  return text


IN_PROCESS = [b for b in ITEMS.snippets
              if not matching(CHECKED_BLOCKS, b.text) and not matching(FRESH_PROCESS, b.text)]


def run_like_a_notebook(code: str, filename: str) -> list:
  """Runs code statement by statement; returns the value of every expression
  statement and every name bound, as a notebook cell would show them."""
  namespace, shown = {"__name__": "readme_snippet"}, []
  for stmt in ast.parse(code).body:
    if isinstance(stmt, ast.Expr):
      shown.append(eval(compile(ast.Expression(stmt.value), filename, "eval"), namespace))
    else:
      exec(compile(ast.Module([stmt], []), filename, "exec"), namespace)
  return shown + [v for k, v in namespace.items() if not k.startswith("__")]


@shared
@pytest.mark.parametrize("block", IN_PROCESS, ids=lambda b: f"README.md:{b.line}")
def test_readme_snippet(block, smoke):
  workdir, _ = smoke
  values = run_like_a_notebook(substituted(block.text, workdir), f"README.md:{block.line}")
  # Every array a snippet computes holds numbers.
  import jax
  import xarray as xr
  arrays = [v for v in values if isinstance(v, (xr.DataArray, np.ndarray, jax.Array))]
  assert arrays
  for v in arrays:
    assert np.asarray(v).size and np.isfinite(np.asarray(v, dtype=float)).any()


@pytest.mark.parametrize("key", list(FRESH_PROCESS))
def test_readme_snippet_in_a_fresh_process(key):
  (block,) = [b for b in ITEMS.snippets if key in b.text]
  out = run([sys.executable, "-c", block.text + FRESH_PROCESS[key]], timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]


# --- blocks that show output or files ---------------------------------------------------


def columns(line: str) -> list[str]:
  """A table line's cells (separated by 2 spaces or more), up to a trailing ...."""
  return re.split(r"\s{2,}", line.strip().removesuffix("...").strip())


@shared
def test_summary_table_sample(smoke):
  """The sample's header is the start of the default study's, and its row reads
  as the table's rows do."""
  (sample,) = [t for t in ITEMS.other if "variant          depth  lr   seeds" in t]
  head, row = sample.splitlines()
  _, out = smoke
  lines = out.stdout.splitlines()
  (header,) = [l for l in lines if l.startswith("variant ")]
  assert columns(header)[:len(columns(head))] == columns(head)
  want = columns(row)[:2]  # variant and depth: the smoke study's seeds and numbers differ
  assert any(columns(l)[:2] == want for l in lines)


@shared
def test_workdir_listing(smoke):
  """Every path the README lists is in a workdir the default study wrote."""
  workdir, _ = smoke
  (listing,) = [t for t in ITEMS.other if "WORKDIR/config.json" in t]
  for line in listing.splitlines():
    base = None
    for word in line.split():
      if word == "...":
        continue
      if not (word.startswith("WORKDIR/") or re.fullmatch(r"[\w.]+\.\w+", word)):
        break  # the description
      path = word if word.startswith("WORKDIR/") else f"{base}/{word}"
      base = path.rstrip("/").rsplit("/", 1)[0]
      pattern = path.replace("WORKDIR/", "").replace("GROUP", "*").replace("STEP", "*")
      assert list(workdir.glob(pattern.rstrip("/"))), path


def test_adding_a_measurement(monkeypatch, tmp_path):
  """The README's example record kind, as a module of icsjax.records, registered
  as the README says (tests/test_records.py's registration), runs and records
  the kernels' norms."""
  from test_records import check_kernel_norms
  from test_records import register
  (block,) = [b for b in ITEMS.snippets if "# icsjax/records/kernel_norms.py" in b.text]
  module = types.ModuleType("icsjax.records.kernel_norms")
  exec(compile(block.text, f"README.md:{block.line}", "exec"), module.__dict__)
  register(monkeypatch, module.KIND)
  c = tiny_config(steps=20)
  c.kernel_norms_every = 10
  (ds,) = runner.run(c, tmp_path / "w", progress=False, log=lambda *_: None).values()
  check_kernel_norms(ds, tmp_path / "w")


# --- messages the README quotes ---------------------------------------------------------


def error_line(stderr: str) -> str:
  (line,) = [l for l in stderr.splitlines() if l.strip()]
  return line


def quoted(key: str) -> str:
  (message,) = [m for m in ITEMS.messages if key in m]
  return message


def test_refused_config_message(tmp_path):
  """The README's example of a refused config is what the default config with
  that field prints, and nothing else; exit code 2."""
  out = run([sys.executable, "-m", "icsjax.main", "--config=configs/default.py",
             f"--workdir={tmp_path / 'w'}", "--config.record_every=30"], timeout=300)
  assert out.returncode == 2
  assert error_line(out.stderr) == quoted("error: config.record_every=30")


def test_workdir_in_use_message(tmp_path):
  """The README's refusal of a second run, with this holder's host, pid and start."""
  workdir = tmp_path / "default"
  from test_clean_failures import LOCK_HOLDER
  holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(workdir)], cwd=ROOT,
                            env=environment(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    info = json.loads(workdir_lock.lock_path(workdir).read_text())
    out = run(smoke_argv(DEFAULT_STUDY, {SMOKE_WORKDIR: workdir}, tmp_path), timeout=300)
  finally:
    holder.kill()
    holder.wait()
  assert out.returncode == 2
  want = quoted("is in use by another run").replace("runs/default", str(workdir))
  want = re.sub(r"\(host .*?\)", f"({workdir_lock.holder_text(info)})", want)
  assert error_line(out.stderr) == want


def test_write_failure_message():
  """The README's line on a failed write is the one a run prints (tests/
  test_write_failures.py makes writes fail)."""
  import errno
  from icsjax import write_errors
  readme = quoted("error: could not write ")
  e = write_errors.WriteFailed("runs/default/checkpoints/400",
                               write_errors.reason(OSError(errno.ENOSPC, "No space left")))
  assert write_errors.line(e).startswith(readme.removesuffix("..."))


def test_interrupted_message():
  """The README's line on Ctrl-C is the one the command prints (tests/
  test_clean_failures.py presses Ctrl-C), the command being the one typed."""
  readme = quoted("interrupted: ")
  assert readme.endswith(" python -m icsjax.main ...")
  argv = ["/x/icsjax/main.py", "--config=default", "--workdir=runs/default"]
  line = main_lib.resume_line(argv)
  assert line == readme.removesuffix("...") + "--config=default --workdir=runs/default"


def test_preempted_message():
  """The README's line on SIGTERM is the one the command prints (tests/
  test_preemption.py sends SIGTERM), the command being the one typed."""
  from icsjax import preemption
  readme = quoted("preempted: ")
  assert readme.endswith(" python -m icsjax.main ...")
  argv = ["/x/icsjax/main.py", "--config=default", "--workdir=runs/default"]
  line = preemption.saved_line(1500, main_lib.rerun_command(argv))
  assert line == readme.removesuffix("...") + "--config=default --workdir=runs/default"
