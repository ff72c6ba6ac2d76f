"""Runs a study: validate, place data, then every group segment by segment."""

from __future__ import annotations

import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from icsjax import data as data_lib
from icsjax import store
from icsjax import study as study_lib
from icsjax import summary as summary_lib
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
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()[:d]), ("model",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("model"))


def cpu_model_chunk(num_models: int, devices: int) -> int:
  """train.model_chunk of each device's share on a CPU; 0 (no chunks) elsewhere."""
  if jax.default_backend() != "cpu":
    return 0
  return train.model_chunk(-(-num_models // devices))


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
      loaded[key] = data_lib.load(g.static)
    sharding = model_sharding(g.size)
    devices = 1 if sharding is None else sharding.mesh.size
    if (key, devices) not in placed:  # every device of the group holds the whole dataset
      placed[key, devices] = loaded[key] if sharding is None else jax.device_put(
          loaded[key], jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec()))
    ds = placed[key, devices]
    program = train.GroupProgram(static=g.static, run=run_spec, task=ds.task,
                                 num_outputs=ds.num_outputs, input_shape=ds.input_shape,
                                 num_train=ds.num_train, num_test=ds.num_test,
                                 devices=devices, model_chunk=cpu_model_chunk(g.size, devices))
    hparams = {k: jnp.asarray(pad_models(np.asarray(v, np.float32), devices))
               for k, v in g.hparams.items()}
    seeds = jnp.asarray(pad_models(np.asarray(g.coords["seed"], np.int32), devices))
    state = program.init(seeds, hparams)
    if sharding is not None:
      hparams, seeds, state = jax.device_put((hparams, seeds, state), sharding)
    runs.append(GroupRun(g, program, ds, hparams, seeds, state))
  return runs


def time_coords(config, start: int) -> dict[str, np.ndarray]:
  seg = config.segment_steps
  return {"step": start + np.arange(1, seg + 1),
          "record_step": start + np.arange(config.record_every, seg + 1, config.record_every),
          "eval_step": start + np.arange(config.eval_every, seg + 1, config.eval_every)}


def fixed_coords(config, gr: GroupRun) -> dict:
  """{name: (dims, values)} of the coordinates a group's records keep for the run."""
  model = gr.program.model
  return {"layer": (["layer"], list(model.layer_names)),
          "layer_units": (["layer"], list(model.layer_units)),
          "unit": (["unit"], list(range(gr.program.max_units))),
          "tracked_unit": (["tracked_unit"], list(config.tracked_units)),
          "quantile": (["quantile"], list(train.QUANTILES))}


def record_attrs(config, gr: GroupRun) -> dict:
  b = gr.group.static["batch_size"]
  return {"step_convention": "step t is the t-th update; per-step loss is before it, "
                             "records and evaluations read the state after it",
          "monitor_mode": config.monitor_mode,
          "monitor_examples": gr.group.static["monitor_size"],
          "test_examples_evaluated": gr.program.num_test_batches * b,
          "train_mode_eval_batch_size": b}


def run_segment(gr: GroupRun, start: int) -> dict:
  """Trains one group for one segment; returns its records on the host."""
  gr.state, records = gr.program.segment(gr.state, gr.hparams, gr.model_seeds, gr.data,
                                         jnp.int32(start))
  records["model"] = {"diverged_step": gr.state.diverged_step}
  k = gr.group.size  # drop the padding models
  return jax.tree_util.tree_map(lambda a: np.asarray(a)[:k], jax.device_get(records))


class Progress:
  """Steps done, model-steps/s and ETA on one line (tqdm when it is installed)."""

  def __init__(self, total_steps: int, num_models: int, enabled: bool):
    self.total, self.models, self.done = total_steps, num_models, 0
    self.t0 = time.perf_counter()
    self.bar = None
    if enabled:
      from tqdm import tqdm
      self.bar = tqdm(total=total_steps, unit="step", file=sys.stderr, dynamic_ncols=True)

  def update(self, steps: float):
    self.done += steps
    if self.bar is not None:
      rate = self.done * self.models / max(time.perf_counter() - self.t0, 1e-9)
      self.bar.set_postfix_str(f"{rate:,.0f} model-steps/s")
      self.bar.update(steps)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def run(config, workdir, *, progress: bool = True, log=print) -> dict:
  """Runs the study of `config` into `workdir`; returns {group: xarray.Dataset}."""
  study = study_lib.expand(config)  # every config error surfaces here, before compute
  status = store.prepare_workdir(workdir, config.to_json(), grid_json(study))
  if status == "restart":
    log(f"{workdir} holds this same config: rerunning it from step 0 "
        f"(runs are deterministic, so its records come out identical)")
  log(f"study: {len(study.groups)} group(s), {study.num_models} models, "
      f"{config.steps} steps, on {len(jax.local_devices())} {jax.devices()[0].platform} "
      f"device(s)")
  runs = build_group_runs(study)
  bar = Progress(config.steps, study.num_models, progress)
  for seg in range(study.num_segments):
    start = seg * config.segment_steps
    for gr in runs:
      records = run_segment(gr, start)
      if seg == 0:
        store.write_schema(workdir, gr.group.name,
                           store.make_schema(records, fixed_coords(config, gr),
                                             record_attrs(config, gr)))
      store.write_segment(workdir, gr.group.name, seg, records, time_coords(config, start))
      bar.update(config.segment_steps / len(runs))
  bar.close()
  datasets = store.load(workdir)
  table = summary_lib.format_table(summary_lib.rows(datasets, config.eval_every))
  (store.pathlib.Path(workdir) / "summary.txt").write_text(table + "\n")
  log(table)
  return datasets
