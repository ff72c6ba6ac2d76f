"""Runs a study: validate, place data, then every group segment by segment,
checkpointing as it goes and resuming where a killed run stopped."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from icsjax import checkpoint as checkpoint_lib
from icsjax import data as data_lib
from icsjax import failure
from icsjax import faults
from icsjax import hosts
from icsjax import live_metrics
from icsjax import padding
from icsjax import placement
from icsjax import preemption
from icsjax import programs as programs_lib
from icsjax import records as records_lib
from icsjax import shards
from icsjax import store
from icsjax import study as study_lib
from icsjax import summary as summary_lib
from icsjax import train
from icsjax import workdir_lock
from icsjax import workdir_path
from icsjax import write_errors
from icsjax.progress import Progress
from icsjax.spec import GroupSpec
from icsjax.state import ModelState


@dataclasses.dataclass
class GroupRun:
  """A compiled program (one logical group, or several padded into one:
  icsjax.programs), its loop, its per-model inputs and its live state."""
  program: programs_lib.Program
  specs: tuple[GroupSpec, ...]  # each logical group's own, in program order
  spec: GroupSpec               # the program's (a padded one: its padded network)
  loop: train.Loop
  data: data_lib.Dataset
  hparams: dict
  model_seeds: jax.Array
  state: ModelState
  baseline: failure.Baseline  # what its models' final evaluations are judged against

  @property
  def groups(self) -> tuple[study_lib.Group, ...]:
    return self.program.groups

  @property
  def group(self) -> study_lib.Group:
    """The program's one logical group (a padded program has several: `groups`)."""
    if self.program.padded:
      raise ValueError(f"program {self.program.name} trains {len(self.groups)} groups")
    return self.groups[0]

  @property
  def size(self) -> int:
    return self.program.size

  @property
  def block(self) -> tuple[int, int]:
    """(first device, devices) the program's models are spread over."""
    return (self.spec.first_device, self.spec.devices)

  @functools.cached_property
  def template(self) -> ModelState:
    """One model's state in the program's shapes."""
    return _state_template(self.spec, self.hparams)

  @functools.cached_property
  def own_templates(self) -> tuple[ModelState, ...]:
    """One model's state in each group's own shapes (what a checkpoint holds)."""
    return tuple(_state_template(own, self.hparams) for own in self.specs)


def grid_json(study: study_lib.Study) -> dict:
  return {"num_models": study.num_models,
          "groups": [dataclasses.asdict(g) for g in study.groups], **shards.grid_fields(study)}


def load_data(study: study_lib.Study) -> dict:
  """{data key: Dataset}: each distinct dataset of the study, loaded once."""
  run = study_lib.run_spec(study.config)
  loaded = {}
  for g in study.groups:
    key = data_lib.data_key(g.static)
    if key not in loaded:
      loaded[key] = records_lib.prepare_data(data_lib.load(g.static), run, g.static)
  return loaded


def plan(study: study_lib.Study):
  """(programs, choices) of `study` on this backend (icsjax.programs.plan)."""
  return programs_lib.plan(study, jax.default_backend())


def _initial_state(program, specs, spec, loop, hparams, devices: int) -> ModelState:
  """A program's models before their first step, their axis padded for `devices`:
  each group's own networks, initialised as alone and, in a padded program,
  padded to its network."""
  if not program.padded:
    return loop.init(jnp.asarray(placement.pad_models(np.asarray(program.seeds(), np.int32),
                                                      devices)),
                     {k: jnp.asarray(placement.pad_models(v, devices))
                      for k, v in hparams.items()})
  template = _state_template(spec, hparams)
  parts = []
  for g, own, start in zip(program.groups, specs, program.offsets()):
    hp = {k: v[start:start + g.size] for k, v in hparams.items()}
    state = train.make_loop(own).init(jnp.asarray(np.asarray(g.coords["seed"], np.int32)), hp)
    parts.append(padding.pad_tree(state, template, blocks=spec.flatten_blocks))
  return jax.tree_util.tree_map(
      lambda *a: jnp.asarray(placement.pad_models(np.concatenate(a), devices)), *parts)


def _state_template(spec: GroupSpec, hparams) -> ModelState:
  """One model's state in the program's shapes (no model axis)."""
  hp = {k: jnp.asarray(v[0]) for k, v in hparams.items()}
  return jax.eval_shape(lambda: train.init_model(spec, 0, hp))


def build_group_runs(study: study_lib.Study, loaded: dict | None = None,
                     programs=None) -> list[GroupRun]:
  """Initialises every program's models on its data (`load_data`'s, loaded here
  when not given); `programs`: the study's (`plan`'s when not given)."""
  run = study_lib.run_spec(study.config)
  backend = jax.default_backend()
  loaded = load_data(study) if loaded is None else loaded
  programs = plan(study)[0] if programs is None else programs
  placed, baselines, runs = {}, {}, []
  blocks = placement.device_blocks(len(programs), backend, jax.device_count(), hosts.count())
  for program, block in zip(programs, blocks):
    g = program.groups[0]  # the program's groups share their data
    key = data_lib.data_key(g.static)
    sharding = placement.model_sharding(program.size, block)
    devices = 1 if sharding is None else sharding.mesh.size
    where = (key, devices, block[0])
    if where not in placed:  # every device of the program holds the whole dataset
      placed[where] = loaded[key] if sharding is None else jax.device_put(
          loaded[key], jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
    ds = placed[where]
    specs = tuple(GroupSpec(static=member.static, run=run, task=ds.task,
                            num_outputs=ds.num_outputs, input_shape=ds.input_shape,
                            num_train=ds.num_train, num_test=ds.num_test, devices=devices,
                            first_device=block[0],
                            probes_in_sequence=placement.probes_in_sequence(backend))
                  for member in program.groups)
    spec = dataclasses.replace(specs[0], static=program.static, variants=program.variants)
    spec = dataclasses.replace(spec, model_chunk=placement.group_model_chunk(
        program.size, devices, records_lib.memory_per_model(spec),
        placement.probe_memory_bytes(run.probe_memory_mb), backend))
    examples = spec.num_test_batches * spec.batch_size
    if (key, examples) not in baselines:
      baselines[key, examples] = failure.baseline(loaded[key], ds.task, ds.num_outputs, examples)
    loop = train.make_loop(spec)
    hparams = {k: np.asarray(v, np.float32) for k, v in program.hparams().items()}
    state = _initial_state(program, specs, spec, loop, hparams, devices)
    hparams = {k: jnp.asarray(placement.pad_models(v, devices)) for k, v in hparams.items()}
    seeds = jnp.asarray(placement.pad_models(np.asarray(program.seeds(), np.int32), devices))
    if sharding is not None:
      hparams, seeds, state = jax.device_put((hparams, seeds, state), sharding)
    runs.append(GroupRun(program, specs, spec, loop, ds, hparams, seeds, state,
                         baselines[key, examples]))
  return runs


def host_states(gr: GroupRun) -> dict[str, ModelState]:
  """{group: its models' state on the host} (what a checkpoint holds: each
  group's own networks, whatever program trained them); gathered from every
  process (each must call this)."""
  state = jax.tree_util.tree_map(lambda a: np.asarray(a)[:gr.size], hosts.to_host(gr.state))
  out = {}
  for g, own, start in zip(gr.groups, gr.own_templates, gr.program.offsets()):
    mine = jax.tree_util.tree_map(lambda a: a[start:start + g.size], state)
    if gr.program.padded:
      mine = padding.unpad_tree(mine, own, gr.spec.flatten_blocks)
    out[g.name] = mine
  return out


def host_state(gr: GroupRun) -> ModelState:
  """The state of a program's one group on the host (`host_states`)."""
  return host_states(gr)[gr.group.name]


def place_states(gr: GroupRun, states: dict) -> ModelState:
  """`host_states`' inverse: the program's state laid out on its devices."""
  parts = [states[g.name] for g in gr.groups]
  if gr.program.padded:
    parts = [padding.pad_tree(jax.tree_util.tree_map(jnp.asarray, p), gr.template,
                              blocks=gr.spec.flatten_blocks) for p in parts]
  whole = jax.tree_util.tree_map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *parts)
  return placement.place(whole, gr.size, gr.block)


def checkpoint_steps(config) -> list[int]:
  """The steps a run saves a checkpoint at: every checkpoint_segments-th segment's
  end, and the last step."""
  seg, every = config.segment_steps, config.checkpoint_segments
  if not every:
    return []
  ends = [(s + 1) * seg for s in range(config.steps // seg)]
  return [e for i, e in enumerate(ends) if (i + 1) % every == 0 or e == config.steps]


def _nbytes(tree) -> int:
  return sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(tree))


def bytes_needed(runs: list[GroupRun], config) -> tuple[int, int]:
  """(records, checkpoints): bytes of array data the run writes into its workdir,
  a lower bound of what it needs (file formats add a little). Records: every
  segment's, whose shapes the segment's trace gives without computing it (the
  step-0 slots it returns are written once); checkpoints: one state per
  group, times the steps kept on disk at once (one more than checkpoint_keep
  while a new step is written)."""
  segments = config.steps // config.segment_steps
  records = state = 0
  for gr in runs:
    real = gr.size / len(gr.model_seeds)  # the padding models are not written
    out_state, out = jax.eval_shape(gr.loop.segment, gr.state, gr.hparams, gr.model_seeds,
                                    gr.data, jnp.int32(0))
    step_0 = sum(_nbytes(tree) // jax.tree_util.tree_leaves(tree)[0].shape[1]
                 for kind, tree in out.items() if records_lib.has_step_0_slot(kind))
    records += real * (segments * (_nbytes(out) - step_0) + step_0)
    state += real * _nbytes(out_state)
  saved = len(checkpoint_steps(config))
  kept = min(saved, config.checkpoint_keep + 1) if config.checkpoint_keep else saved
  return int(records), int(state * kept)


def check_free_space(runs: list[GroupRun], config, workdir) -> None:
  """Refuses a run whose workdir's filesystem has less room than `bytes_needed`
  (less what a resumed run's records and checkpoints already hold). A bucket
  workdir has no free space to check."""
  if workdir_path.in_bucket(workdir):
    return
  records, checkpoints = bytes_needed(runs, config)
  held = (write_errors.bytes_under(workdir_path.path(workdir) / store.RECORDS)
          + write_errors.bytes_under(checkpoint_lib.directory(workdir)))
  write_errors.check_free_space(
      workdir, max(0, records + checkpoints - held),
      f"{write_errors.megabytes(records)} of records, {write_errors.megabytes(checkpoints)} "
      f"of checkpoints")


def run_segment(gr: GroupRun, start: int, dispatched: Callable[[], None] = lambda: None
                ) -> dict:
  """`run_program_segment` of a program of one group: that group's records."""
  return run_program_segment(gr, start, dispatched)[gr.group.name]


def run_program_segment(gr: GroupRun, start: int,
                        dispatched: Callable[[], None] = lambda: None) -> dict:
  """Trains one program for one segment; returns {group: its records on the
  host}, with each model's failure verdict at the segment's end (`dispatch`,
  then `collect`)."""
  return collect(gr, dispatch(gr, start, dispatched))


def _on_host(gr: GroupRun, tree):
  return jax.tree_util.tree_map(lambda a: np.asarray(a)[:gr.size],  # drop padding models
                                hosts.to_host(tree))


def dispatch(gr: GroupRun, start: int, dispatched: Callable[[], None] = lambda: None):
  """Queues one segment of a program and returns at once with what `collect`
  reads: programs dispatched one after another run at once where their
  devices differ (icsjax.placement.device_blocks). `dispatched` is called once
  the compiled call has returned (traced and compiled, its work queued)."""
  gr.state, records = gr.loop.segment(gr.state, gr.hparams, gr.model_seeds, gr.data,
                                      jnp.int32(start))
  dispatched()
  records[records_lib.MODEL] = {"diverged_step": gr.state.diverged_step,
                                **records_lib.model_records(gr.spec, gr.hparams)}
  return start, records


def collect(gr: GroupRun, pending) -> dict:
  """{group: its records on the host} of a `dispatch`ed segment, once it is done;
  the first segment's start with step 0 (the kinds that record it)."""
  start, records = pending
  records = _on_host(gr, records)
  if start:
    records = records_lib.without_step_0(records)
  records = records_lib.finish(records)
  records[records_lib.MODEL].update(failure.verdict(
      records[records_lib.MODEL]["diverged_step"], failure.last_evaluation(records),
      gr.baseline))
  return programs_lib.split_records(records, gr.program, gr.spec, gr.specs)


def schema(spec: GroupSpec, baseline: failure.Baseline, records: dict) -> dict:
  """A group's record schema: each variable's dims, fixed coordinates, attributes."""
  variables = {name: records_lib.variable_dims(kind, name)
               for kind, tree in records.items() for name in tree}
  return store.make_schema(variables, records_lib.fixed_coords(spec),
                           {**records_lib.attrs(spec), **baseline.attrs()})


def all_host_states(runs: list[GroupRun]) -> dict[str, ModelState]:
  """{group: host state} of every program (every process must call this)."""
  return {name: state for gr in runs for name, state in host_states(gr).items()}


def resume(runs: list[GroupRun], checkpoints, config, workdir, fingerprint: str, log) -> int:
  """Restores every group from the newest intact checkpoint whose records are all
  on disk, deletes records written after it, and returns the first segment to
  run (0 when there is nothing to resume from)."""
  seg = config.segment_steps
  names = [g.name for gr in runs for g in gr.groups]
  written = min(store.complete_segments(workdir, name) for name in names)
  step, states = 0, None
  if checkpoints is not None:
    step, states = checkpoints.restore_latest(
        all_host_states(runs),
        fingerprint, at_most=written * seg, log=log)
  # Every process read the shared workdir itself: they must have found the same step.
  steps = [s[0] for s in hosts.gather_ints([step])]
  if len(set(steps)) > 1:
    raise RuntimeError(f"the processes of this run resume from different checkpoints "
                       f"(steps {steps}): the workdir changed while they read it")
  hosts.barrier("icsjax-resume-read")  # before process 0 deletes what the others read
  if hosts.primary():
    if checkpoints is not None:
      checkpoints.delete_after(step)
    for name in names:
      store.truncate(workdir, name, step // seg)
  for gr in runs:
    if states is not None:
      gr.state = place_states(gr, states)
  if step:
    log(f"{workdir} holds this same config: resuming it at step {step}, its latest intact "
        f"checkpoint (records after it, if any, are written again)")
  else:
    log(f"{workdir} holds this same config but no intact checkpoint: rerunning it from "
        f"step 0 (runs are deterministic, so its records come out identical)")
  return step // seg


def run_segment_of_every_group(runs: list[GroupRun], seg: int, config, workdir, bar,
                               compiles: bool = False,
                               live: live_metrics.LiveMetrics | None = None) -> None:
  """Trains every program through segment `seg` and writes each group's records,
  then its live metrics (`live`, when given), on process 0 only (every process
  trains); `compiles`: this process calls each program's loop for the first
  time (the bar says so)."""
  start = seg * config.segment_steps

  def queued(gr):
    if compiles:
      bar.compiling(gr.program.name)
    return time.perf_counter(), dispatch(gr, start, bar.compiled if compiles else lambda: None)

  # Programs on blocks of devices of their own are all queued before any is
  # awaited, so that they run at once; else each is queued when the one before
  # it is done, as one program over every device wants.
  side_by_side = any(gr.spec.first_device for gr in runs)
  pending = [queued(gr) for gr in runs] if side_by_side else (queued(gr) for gr in runs)
  for gr, (started, segment) in zip(runs, pending):
    by_group = collect(gr, segment)
    seconds = time.perf_counter() - started  # side by side, they overlap
    if hosts.primary():
      for g, spec in zip(gr.groups, gr.specs):
        records = by_group[g.name]
        if seg == 0:
          store.write_schema(workdir, g.name, schema(spec, gr.baseline, records))
        store.write_segment(workdir, g.name, seg, records,
                            records_lib.time_coords(spec.run, start))
        if live is not None:
          live.write(g, spec, records, start, seconds, compiles)
    bar.group_done(config.segment_steps)


def run(config, workdir, *, progress: bool = True, log=print,
        on_write_failure: Callable[[write_errors.WriteFailed], None] | None = None,
        stop: preemption.Stop | None = None, tensorboard: bool = True,
        groups=None) -> dict:
  """Runs the study of `config` into `workdir`; returns {group: xarray.Dataset}.

  `groups` (names): run only those groups of the study, a shard of it (icsjax.shards).

  Same config, same workdir: resumes from the latest intact checkpoint, and
  the records come out bitwise identical to an uninterrupted run's. The run
  holds the workdir's lock throughout (icsjax.workdir_lock): a second run on
  it raises WorkdirBusy, naming this one.

  A write into the workdir that fails raises write_errors.WriteFailed, naming
  the path and the OS error; a checkpoint save that fails in the background
  is also handed to `on_write_failure` at once (icsjax.main ends the run
  there). A filesystem with less free space than the run's records and
  checkpoints raises NotEnoughSpace before the workdir is written.

  `stop` (icsjax.preemption) is asked at every segment boundary, once the
  segment's records are written, whether to stop there: then the run saves a
  checkpoint at that step, whether or not a regular one falls there, waits
  until it is on disk and raises preemption.Preempted.

  `tensorboard`: write each segment's live metrics under WORKDIR/tensorboard/
  (icsjax.live_metrics).
  """
  study = study_lib.expand(config)  # every config error surfaces here, before compute
  study = study if groups is None else shards.subset(study, groups)
  # Several processes: process 0 alone writes the workdir, and alone locks it.
  with workdir_lock.hold(workdir) if hosts.primary() else contextlib.nullcontext():
    return _run_locked(study, workdir, progress, log, on_write_failure,
                       stop or preemption.Never(), tensorboard)


def _run_locked(study: study_lib.Study, workdir, progress: bool, log,
                on_write_failure, stop: preemption.Stop, tensorboard: bool) -> dict:
  config = study.config
  primary = hosts.primary()
  hosts.check_shared_workdir(workdir)  # several processes must see one workdir
  status = store.check_workdir(workdir, config.to_json())  # a different study: refused at once
  shards.check_workdir(workdir, study)  # another subset of its groups: refused too
  faults.point("run_start")
  loaded = load_data(study)  # data that is not there: refused before the workdir is written
  if primary:
    log(f"study: {len(study.groups)} group(s), {study.num_models} models, "
        f"{config.steps} steps, on {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s)" + (f" of {hosts.count()} processes" if hosts.count() > 1 else ""))
  programs, choices = plan(study)
  if primary:
    for choice in choices:
      log(f"programs: {choice.describe()}")
  runs = build_group_runs(study, loaded, programs)
  check_free_space(runs, config, workdir)  # too little room: refused before the workdir is written
  if primary:
    if status == "resume":
      changed = store.changed_versions(workdir)
      if changed:
        log(f"{workdir} was written with other versions ({changed}): resumed results will "
            f"be close to an uninterrupted run's but no longer bitwise identical")
    store.prepare_workdir(workdir, config.to_json(), grid_json(study))
  hosts.barrier("icsjax-workdir-prepared")  # every process has checked it before
  checkpoints = None
  if config.checkpoint_segments:
    for writer in (True, False):  # process 0 makes the directory the others open
      if writer == primary:
        checkpoints = checkpoint_lib.Checkpoints(
            workdir, config.checkpoint_keep, on_failure=on_write_failure if primary else None)
      hosts.barrier(f"icsjax-checkpoints-{writer}")
  fingerprint = checkpoint_lib.fingerprint(config.to_json())
  try:
    first = (resume(runs, checkpoints, config, workdir, fingerprint,
                    log if primary else lambda *_: None)
             if status == "resume" else 0)
    bar = Progress(config.steps, len(runs), study.num_models, progress and primary,
                   first * config.segment_steps)
    seg_steps = config.segment_steps
    stop.begin(range((first + 1) * seg_steps, config.steps + 1, seg_steps),
               config.preemption_budget_seconds, checkpoints)
    live = (live_metrics.LiveMetrics(workdir, first * seg_steps) if tensorboard and primary
            else None)
    for seg in range(first, study.num_segments):
      run_segment_of_every_group(runs, seg, config, workdir, bar, compiles=seg == first,
                                 live=live)
      faults.point("after_segment")
      end = (seg + 1) * seg_steps
      if not primary:
        log(f"segment {seg + 1} of {study.num_segments} done (step {end})")
      stopping = stop.requested(end)
      # After every group's records of the segment: a checkpoint never runs ahead of them.
      if checkpoints is not None and (stopping or (seg + 1) % config.checkpoint_segments == 0
                                      or end == config.steps):
        states = all_host_states(runs)  # every process gathers
        if primary:
          checkpoints.save(end, states, fingerprint)
      if stopping:
        if checkpoints is not None and primary:
          checkpoints.wait()  # on disk before the run ends; a failed save raises WriteFailed
        hosts.barrier("icsjax-preempted")  # no process ends before the save is on disk
        raise preemption.Preempted(end, checkpointed=checkpoints is not None)
  except BaseException:
    if checkpoints is not None:
      checkpoints.abandon()  # a save in flight may end; the run's own error is the news
    raise
  if checkpoints is not None:
    checkpoints.close()  # a last save that failed raises here
  if live is not None:
    live.close()
  bar.close()
  if not primary:
    return {}
  datasets = store.load(workdir)
  log(summary_lib.write(workdir_path.path(workdir), datasets, config.eval_every))
  return datasets
