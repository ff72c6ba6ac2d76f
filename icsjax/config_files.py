"""Study configs by file or by name.

The configs live in the repo's ``configs/`` and install inside the package as
``icsjax.configs`` (pyproject.toml), so ``--config=default`` works in a checkout
and wherever the package is installed. Imports no JAX: ``icsjax.main`` calls it
before the command line is parsed.
"""

import ast
import importlib.util
import os
import pathlib

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


class CommandLineError(ValueError):
  """A command line, or the config file it names, that cannot run; the message
  names what is wrong and what is allowed."""


def shipped_dirs():
  """Directories that hold the shipped configs, the first to look in first."""
  dirs = []
  # A checkout (installed editable, or run from its root): its own configs/.
  # pyproject.toml marks the checkout, so that a stray top-level `configs`
  # beside an installed package is never taken for ours.
  root = PACKAGE_DIR.parent
  if (root / "pyproject.toml").is_file() and (root / "configs").is_dir():
    dirs.append(root / "configs")
  # An installed package: icsjax.configs, wherever the installer put it.
  spec = importlib.util.find_spec("icsjax.configs")
  for p in (spec.submodule_search_locations or ()) if spec else ():
    if pathlib.Path(p).resolve() not in dirs:  # an editable install maps it to the checkout's
      dirs.append(pathlib.Path(p).resolve())
  return dirs


def shipped_names():
  """The names of the shipped configs, sorted."""
  for d in shipped_dirs():
    names = sorted(p.stem for p in d.glob("*.py") if not p.stem.startswith("_"))
    if names:
      return names
  return []


def resolve(arg: str) -> str:
  """The config file `arg` names: `arg` itself when it is a file, else the
  shipped config it names (``default``, ``default.py`` or
  ``configs/default.py``). A ``:suffix`` (which ml_collections passes to
  ``get_config``) is kept. Raises CommandLineError for anything else."""
  # ml_collections splits a config argument at its first colon.
  path, colon, suffix = arg.partition(":")
  if os.path.isfile(path):
    return arg
  head, name = os.path.split(os.path.normpath(path))
  if name.endswith(".py"):
    name = name[:-3]
  if head in ("", "configs") and name and not name.startswith("_"):
    for d in shipped_dirs():
      if (d / f"{name}.py").is_file():
        return str(d / f"{name}.py") + colon + suffix
  names = ", ".join(shipped_names()) or "none found"
  raise CommandLineError(f"config {path!r} is neither a file nor a shipped config "
                   f"(shipped: {names})")


def resolve_argv(argv):
  """`argv` with its --config argument (``--config=X`` or ``--config X``,
  one dash or two) passed through `resolve`; everything else unchanged."""
  out = list(argv)
  for i in range(1, len(out)):
    a = out[i]
    if a == "--":  # the rest are positional arguments, as absl reads them
      break
    for flag in ("--config", "-config"):
      if a.startswith(flag + "="):
        out[i] = flag + "=" + resolve(a[len(flag) + 1:])
      elif a == flag and i + 1 < len(out):
        out[i + 1] = resolve(out[i + 1])
  return out


SWEEP_FLAGS = ("--config.sweep.", "-config.sweep.")


def split_sweeps(argv) -> tuple[list, dict]:
  """`argv` without its ``--config.sweep.NAME=VALUES`` arguments, and those
  sweeps as {NAME: tuple of values} (a repeated one: the last wins).

  A config's sweep lists only the fields it varies, and absl overrides only
  keys a config already has, so sweeps are taken apart here and added to the
  loaded config (``add_sweeps``); validation then checks them like any other.
  """
  rest, sweeps = [], {}
  i = 0
  while i < len(argv):
    a = argv[i]
    if a == "--":  # the rest are positional arguments, as absl reads them
      rest += argv[i:]
      break
    flag = next((f for f in SWEEP_FLAGS if a.startswith(f)), None)
    if flag is None or i == 0:
      rest.append(a)
    else:
      name, eq, text = a[len(flag):].partition("=")
      if not eq:  # --config.sweep.NAME VALUES
        i += 1
        text = argv[i] if i < len(argv) else ""
      sweeps[name] = sweep_values(name, text)
    i += 1
  return rest, sweeps


def sweep_values(name: str, text: str) -> tuple:
  """The values of ``--config.sweep.NAME=TEXT``: a Python literal (a tuple, or
  one value), or comma-separated bare words, e.g. ``(none,batchnorm)``."""
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    bare = text.strip()
    closed = bare[:1] not in "([" or bare[-1:] in ")]"
    inner = bare[1:-1] if bare[:1] in "([" else bare
    words = [w.strip().strip("'\"") for w in inner.split(",")]
    if len(words) > 1 and not words[-1]:  # a one-word tuple's comma: (batchnorm,)
      words.pop()
    if not bare or not closed or not all(words):
      raise CommandLineError(f"--config.sweep.{name}={text!r} must be a tuple of values, "
                             f"e.g. --config.sweep.{name}=\"(1,2)\"") from None
    value = tuple(_literal_or_word(w) for w in words)
  return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _literal_or_word(word: str):
  try:
    return ast.literal_eval(word)
  except (ValueError, SyntaxError):
    return word


def add_sweeps(config, sweeps: dict) -> None:
  """Sets config.sweep[NAME] = values for each command-line sweep."""
  if not sweeps:
    return
  with config.unlocked():
    if config.get("sweep") is None:
      config.sweep = {}
    if hasattr(config.sweep, "keys"):  # else validation names the bad sweep
      for name, values in sweeps.items():
        config.sweep[name] = values


def config_arg(argv) -> str | None:
  """The value of argv's --config argument (the last one), or None."""
  value = None
  for i, a in enumerate(argv[1:], start=1):
    if a == "--":
      break
    for flag in ("--config", "-config"):
      if a.startswith(flag + "="):
        value = a[len(flag) + 1:]
      elif a == flag and i + 1 < len(argv):
        value = argv[i + 1]
  return value


def load(arg: str):
  """The ConfigDict of a config argument (``FILE`` or ``FILE:SUFFIX``, as
  ml_collections reads it), or CommandLineError saying why there is none."""
  path, _, suffix = arg.partition(":")
  spec = importlib.util.spec_from_file_location("icsjax_config_file", path)
  if spec is None or spec.loader is None:
    raise CommandLineError(f"--config={path} is not a Python file")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise CommandLineError(f"--config={path} has a syntax error at line {e.lineno}: "
                           f"{e.msg}") from e
  except Exception as e:  # noqa: BLE001 - whatever a user's file raises is reported
    raise CommandLineError(f"--config={path} failed while loading: {_one_line(e)}") from e
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise CommandLineError(f"--config={path} defines no get_config(); a config file defines "
                           f"get_config() returning an ml_collections.ConfigDict, as "
                           f"configs/default.py does")
  try:
    return get_config(suffix) if suffix else get_config()
  except Exception as e:  # noqa: BLE001
    raise CommandLineError(f"--config={arg}: its get_config() raised {_one_line(e)}") from e


def _one_line(e: Exception) -> str:
  text = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


OVERRIDE_FLAGS = ("--config.", "-config.")


def overrides(argv, config) -> list[tuple[str, int, int]]:
  """(field path, first index, end index) of each ``--config.PATH=VALUE`` or
  ``--config.PATH VALUE`` override in argv. A boolean field's bare
  ``--config.PATH`` takes no value, as absl reads it."""
  out, i = [], 1
  while i < len(argv):
    a = argv[i]
    if a == "--":
      break
    flag = next((f for f in OVERRIDE_FLAGS if a.startswith(f)), None)
    if flag is None:
      i += 1
      continue
    path, eq, _ = a[len(flag):].partition("=")
    takes_next = not eq and not isinstance(_lookup(config, path), bool) and i + 1 < len(argv)
    end = i + 2 if takes_next else i + 1
    out.append((path, i, end))
    i = end
  return out


_MISSING = object()


def _lookup(config, path: str):
  """config's value at a dotted path, or _MISSING."""
  node = config
  for part in path.split("."):
    if not hasattr(node, "keys") or part not in node.keys():
      return _MISSING
    node = node[part]
  return node


def check_overrides(argv, config) -> None:
  """CommandLineError for an override of a field the config does not have."""
  for path, _, _ in overrides(argv, config):
    if _lookup(config, path) is _MISSING:
      parent, _, _ = path.rpartition(".")
      node = _lookup(config, parent) if parent else config
      known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "none"
      where = f"config.{parent}" if parent else "the config"
      raise CommandLineError(f"--config.{path} is not a field of {where}; its fields: {known}")


def last_overrides(argv, config) -> list:
  """argv with only the last override of each field: absl's rule for a flag
  given twice, which ml_collections breaks for tuple fields (it joins them)."""
  found = overrides(argv, config)
  last = {path: start for path, start, _ in found}
  dropped = {k for path, start, end in found if last[path] != start for k in range(start, end)}
  return [a for k, a in enumerate(argv) if k not in dropped]
