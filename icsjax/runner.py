"""Runs a study: validate, place data, then every group segment by segment,
checkpointing as it goes and resuming where a killed run stopped."""

from __future__ import annotations

import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from icsjax import checkpoint as checkpoint_lib
from icsjax import data as data_lib
from icsjax import faults
from icsjax import probes
from icsjax import store
from icsjax import study as study_lib
from icsjax import summary as summary_lib
from icsjax import test_time
from icsjax import train


@dataclasses.dataclass
class GroupRun:
  """A group's compiled program, its per-model inputs and its live state."""
  group: study_lib.Group
  program: train.GroupProgram
  data: data_lib.Dataset
  hparams: dict
  model_seeds: jax.Array
  state: train.ModelState


def grid_json(study: study_lib.Study) -> dict:
  return {"num_models": study.num_models,
          "groups": [dataclasses.asdict(g) for g in study.groups]}


def devices_for(num_models: int, available: int) -> int:
  """How many devices a group's model axis spans: the fewest models per device,
  then the least padding (9 models on 4 devices: 3 devices of 3, not 4 of 3)."""
  per_device = lambda d: -(-num_models // d)
  return min(range(1, min(num_models, available) + 1),
             key=lambda d: (per_device(d), d * per_device(d) - num_models))


def model_sharding(num_models: int):
  """The model axis laid out over the local devices that share it best (None: one)."""
  d = devices_for(num_models, jax.local_device_count())
  if d == 1:
    return None
  return jax.sharding.NamedSharding(train.model_mesh(d), jax.sharding.PartitionSpec("model"))


def probe_memory_bytes(config) -> int:
  """The memory a device may give the curvature probe's Lanczos bases."""
  if config.probe_memory_mb:
    return config.probe_memory_mb * 2**20
  stats = jax.local_devices()[0].memory_stats() or {}
  limit = stats.get("bytes_limit")
  return limit // 4 if limit else DEFAULT_PROBE_MEMORY


DEFAULT_PROBE_MEMORY = 2 * 2**30  # a device that does not report its memory


def group_model_chunk(num_models: int, devices: int, bytes_per_model: int,
                      budget: int, backend: str) -> int:
  """Models a device trains at a time (0: its whole share).

  On a CPU, train.model_chunk (cache locality). Anywhere, no more than the
  probe memory budget holds, for the curvature probe keeps a Lanczos basis per
  model: the largest divisor of the share that fits, at least 1.
  """
  share = -(-num_models // devices)
  chunk = train.model_chunk(share) if backend == "cpu" else share
  if bytes_per_model:
    fits = max(1, budget // bytes_per_model)
    chunk = max(c for c in range(1, share + 1) if share % c == 0 and c <= min(chunk, fits))
  return 0 if chunk == share and backend != "cpu" else chunk


def probes_in_sequence(backend: str) -> bool:
  """Whether the probes work in sequence (train.GroupProgram.probes_in_sequence):
  on a CPU, where a model's Lanczos basis and an evaluation's work arrays then
  stay in cache. An accelerator probes its whole share, and each probe's
  evaluations, at once: on one H200 the landscape probe of 32 MLPs cost 1.46x
  its gradients in sequence (a loop iteration per eta) and 0.76x at once, the
  curvature probe 1.49x and 1.23x (benchmarks/probe_cost.py)."""
  return backend == "cpu"


def pad_models(values, multiple: int):
  """Repeats the last model's entry until the model axis divides `multiple`.
  The copies train like any model and are dropped from the records."""
  k = len(values)
  return np.concatenate([values, np.repeat(values[-1:], -k % multiple, axis=0)])


def build_group_runs(study: study_lib.Study) -> list[GroupRun]:
  """Loads each distinct dataset once and initialises every group's models."""
  run_spec = train.RunSpec.from_config(study.config)
  loaded, placed, runs = {}, {}, []
  for g in study.groups:
    key = data_lib.data_key(g.static)
    if key not in loaded:
      loaded[key] = test_time.with_shifted_sets(data_lib.load(g.static), run_spec,
                                                g.static["tfds_data_dir"])
    sharding = model_sharding(g.size)
    devices = 1 if sharding is None else sharding.mesh.size
    if (key, devices) not in placed:  # every device of the group holds the whole dataset
      placed[key, devices] = loaded[key] if sharding is None else jax.device_put(
          loaded[key], jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
    ds = placed[key, devices]
    in_sequence = probes_in_sequence(jax.default_backend())
    program = train.GroupProgram(static=g.static, run=run_spec, task=ds.task,
                                 num_outputs=ds.num_outputs, input_shape=ds.input_shape,
                                 num_train=ds.num_train, num_test=ds.num_test, devices=devices,
                                 probes_in_sequence=in_sequence)
    probe_bytes = 0
    if run_spec.curvature_every and not in_sequence:  # else one basis per device at a time
      probe_bytes = probes.curvature_bytes_per_model(program.num_params, run_spec.lanczos_steps,
                                                     run_spec.slq_vectors,
                                                     run_spec.hutchinson_samples)
    program = dataclasses.replace(program, model_chunk=group_model_chunk(
        g.size, devices, probe_bytes, probe_memory_bytes(study.config), jax.default_backend()))
    hparams = {k: jnp.asarray(pad_models(np.asarray(v, np.float32), devices))
               for k, v in g.hparams.items()}
    seeds = jnp.asarray(pad_models(np.asarray(g.coords["seed"], np.int32), devices))
    state = program.init(seeds, hparams)
    if sharding is not None:
      hparams, seeds, state = jax.device_put((hparams, seeds, state), sharding)
    runs.append(GroupRun(g, program, ds, hparams, seeds, state))
  return runs


def host_state(gr: GroupRun) -> train.ModelState:
  """The group's state on the host, its real models only (what a checkpoint holds)."""
  return jax.tree_util.tree_map(lambda a: np.asarray(a)[:gr.group.size],
                                jax.device_get(gr.state))


def place_state(gr: GroupRun, state: train.ModelState) -> train.ModelState:
  """A host state of the group's real models, padded and laid out for this run's
  devices (which may be more or fewer than the run that saved it had)."""
  sharding = model_sharding(gr.group.size)
  devices = 1 if sharding is None else sharding.mesh.size
  state = jax.tree_util.tree_map(lambda a: jnp.asarray(pad_models(np.asarray(a), devices)),
                                 state)
  return state if sharding is None else jax.device_put(state, sharding)


def record_kinds(config) -> tuple[str, ...]:
  """The record kinds a run writes (the probes and test-time evaluation whose
  cadence is not 0)."""
  return ("record", "eval") + tuple(k for k in study_lib.PROBES + ("test_time",)
                                    if config[f"{k}_every"])


def time_coords(config, start: int) -> dict[str, np.ndarray]:
  """Each written time axis's steps within the segment starting after `start`."""
  seg, spec = config.segment_steps, train.RunSpec.from_config(config)
  out = {"step": start + np.arange(1, seg + 1)}
  for kind in record_kinds(config):
    every = spec.every_of(kind)
    out[store.TIME_AXES[kind]] = start + np.arange(every, seg + 1, every)
  return out


def fixed_coords(config, gr: GroupRun) -> dict:
  """{name: (dims, values)} of the coordinates a group's records keep for the run."""
  model = gr.program.model
  coords = {"layer": (["layer"], list(model.layer_names)),
            "layer_units": (["layer"], list(model.layer_units)),
            "unit": (["unit"], list(range(gr.program.max_units))),
            "tracked_unit": (["tracked_unit"], list(config.tracked_units)),
            "quantile": (["quantile"], list(train.QUANTILES))}
  if config.ics_every or config.curvature_every:
    coords["weight_layer"] = (["weight_layer"], list(gr.program.weight_layers))
  if config.landscape_every:
    coords["lr_multiple"] = (["lr_multiple"], list(config.landscape_lr_multiples))
  if config.curvature_every:
    coords["slq_vector"] = (["slq_vector"], list(range(config.slq_vectors)))
    coords["lanczos_step"] = (["lanczos_step"], list(range(config.lanczos_steps)))
  if config.test_time_every:
    coords.update(test_time.record_coords(gr.program))
  return coords


def record_attrs(config, gr: GroupRun) -> dict:
  b = gr.group.static["batch_size"]
  return {"step_convention": "step t is the t-th update; per-step loss is before it, "
                             "records and evaluations read the state after it",
          "monitor_mode": config.monitor_mode,
          "monitor_examples": gr.group.static["monitor_size"],
          "test_examples_evaluated": gr.program.num_test_batches * b,
          "train_mode_eval_batch_size": b,
          "probe_convention": "ics and landscape at step t probe update t itself (its batch, "
                              "noise draw, parameters before it and real update); curvature "
                              "reads the state after update t",
          "landscape_direction": "d = -update / lr; the point at lr_multiple c is "
                                 "theta - c * lr * d",
          "curvature_batch": f"the first {config.curvature_batch_size} training examples, "
                             "train mode, noise frozen per probe",
          "eos_threshold": "2/lr (sgd), (2 + 2 momentum)/lr (momentum); NaN for adam",
          **(test_time.record_attrs(gr.program) if config.test_time_every else {})}


def optimizer_constants(optimizer: str, hparams) -> dict:
  """Per model: the momentum (Adam: b1; SGD: 0) and the edge-of-stability threshold."""
  momentum = {"sgd": 0.0 * hparams["lr"], "momentum": hparams["momentum"],
              "adam": hparams["b1"]}[optimizer]
  return {"optimizer_momentum": momentum,
          "eos_threshold": probes.eos_threshold(optimizer, hparams["lr"], momentum)}


def run_segment(gr: GroupRun, start: int) -> dict:
  """Trains one group for one segment; returns its records on the host."""
  gr.state, records = gr.program.segment(gr.state, gr.hparams, gr.model_seeds, gr.data,
                                         jnp.int32(start))
  records["model"] = {"diverged_step": gr.state.diverged_step}
  if gr.program.run.curvature_every:
    records["model"].update(optimizer_constants(gr.group.static["optimizer"], gr.hparams))
  k = gr.group.size  # drop the padding models
  records = jax.tree_util.tree_map(lambda a: np.asarray(a)[:k], jax.device_get(records))
  if "curvature" in records:
    c = records["curvature"]
    c.update(probes.curvature_lib.spectrum_records(c["lanczos_alpha"], c["lanczos_beta"]))
  return records


class Progress:
  """Steps done, model-steps/s and ETA on one line (tqdm when it is installed)."""

  def __init__(self, total_steps: int, num_models: int, enabled: bool, resumed_at: int = 0):
    self.total, self.models, self.done = total_steps, num_models, 0
    self.t0 = time.perf_counter()
    self.bar = None
    if enabled:
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, initial=resumed_at, unit="step", file=sys.stderr,
                      dynamic_ncols=True)

  def update(self, steps: float):
    self.done += steps  # this process's steps: the rate leaves resumed ones out
    if self.bar is not None:
      rate = self.done * self.models / max(time.perf_counter() - self.t0, 1e-9)
      self.bar.set_postfix_str(f"{rate:,.0f} model-steps/s")
      self.bar.update(steps)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def resume(runs: list[GroupRun], checkpoints, config, workdir, fingerprint: str, log) -> int:
  """Restores every group from the newest intact checkpoint whose records are all
  on disk, deletes records written after it, and returns the first segment to
  run (0 when there is nothing to resume from)."""
  seg = config.segment_steps
  written = min(store.complete_segments(workdir, gr.group.name) for gr in runs)
  step, states = 0, None
  if checkpoints is not None:
    step, states = checkpoints.restore_latest(
        {gr.group.name: host_state(gr) for gr in runs},
        fingerprint, at_most=written * seg, log=log)
    checkpoints.delete_after(step)
  for gr in runs:
    store.truncate(workdir, gr.group.name, step // seg)
    if states is not None:
      gr.state = place_state(gr, states[gr.group.name])
  if step:
    log(f"{workdir} holds this same config: resuming it at step {step}, its latest intact "
        f"checkpoint (records after it, if any, are written again)")
  else:
    log(f"{workdir} holds this same config but no intact checkpoint: rerunning it from "
        f"step 0 (runs are deterministic, so its records come out identical)")
  return step // seg


def run_segment_of_every_group(runs: list[GroupRun], seg: int, config, workdir, bar) -> None:
  """Trains every group through segment `seg` and writes its records."""
  start = seg * config.segment_steps
  for gr in runs:
    records = run_segment(gr, start)
    if seg == 0:
      store.write_schema(workdir, gr.group.name,
                         store.make_schema(records, fixed_coords(config, gr),
                                           record_attrs(config, gr)))
    store.write_segment(workdir, gr.group.name, seg, records, time_coords(config, start))
    bar.update(config.segment_steps / len(runs))


def run(config, workdir, *, progress: bool = True, log=print) -> dict:
  """Runs the study of `config` into `workdir`; returns {group: xarray.Dataset}.

  Same config, same workdir: resumes from the latest intact checkpoint, and
  the records come out bitwise identical to an uninterrupted run's.
  """
  study = study_lib.expand(config)  # every config error surfaces here, before compute
  status = store.prepare_workdir(workdir, config.to_json(), grid_json(study))
  log(f"study: {len(study.groups)} group(s), {study.num_models} models, "
      f"{config.steps} steps, on {len(jax.local_devices())} {jax.devices()[0].platform} "
      f"device(s)")
  runs = build_group_runs(study)
  checkpoints = (checkpoint_lib.Checkpoints(workdir, config.checkpoint_keep)
                 if config.checkpoint_segments else None)
  fingerprint = checkpoint_lib.fingerprint(config.to_json())
  try:
    first = (resume(runs, checkpoints, config, workdir, fingerprint, log)
             if status == "resume" else 0)
    bar = Progress(config.steps, study.num_models, progress, first * config.segment_steps)
    for seg in range(first, study.num_segments):
      run_segment_of_every_group(runs, seg, config, workdir, bar)
      faults.point("after_segment")
      end = (seg + 1) * config.segment_steps
      # After every group's records of the segment: a checkpoint never runs ahead of them.
      if checkpoints is not None and ((seg + 1) % config.checkpoint_segments == 0
                                      or end == config.steps):
        checkpoints.save(end, {gr.group.name: host_state(gr) for gr in runs}, fingerprint)
  finally:
    if checkpoints is not None:
      checkpoints.wait()
      checkpoints.close()
  bar.close()
  datasets = store.load(workdir)
  table = summary_lib.format_table(summary_lib.rows(datasets, config.eval_every))
  (store.pathlib.Path(workdir) / "summary.txt").write_text(table + "\n")
  log(table)
  return datasets
