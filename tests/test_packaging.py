"""The package stands on its own: configs found by name from any directory,
and pyproject.toml installs every package under icsjax/. (Installing into a
fresh venv takes minutes, so the suite leaves that to the release check.)"""

import os
import pathlib
import sys
import tomllib

import pytest

from conftest import ROOT
from icsjax import config_files

CONFIGS = pathlib.Path(ROOT, "configs")
DEFAULT = str(CONFIGS / "default.py")


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
  """A current directory that is not the repo's root."""
  monkeypatch.chdir(tmp_path)
  return tmp_path


@pytest.mark.parametrize("arg", ["default", "default.py", "configs/default.py"])
def test_resolve_finds_a_shipped_config_by_name(elsewhere, arg):
  assert os.path.samefile(config_files.resolve(arg), DEFAULT)


def test_resolve_keeps_the_get_config_argument(elsewhere):
  path, _, suffix = config_files.resolve("default:wide").partition(":")
  assert os.path.samefile(path, DEFAULT) and suffix == "wide"


def test_resolve_returns_an_existing_file_as_it_is(elsewhere):
  pathlib.Path("default.py").write_text("def get_config():\n  return None\n")
  assert config_files.resolve("default.py") == "default.py"
  assert config_files.resolve("default.py:x") == "default.py:x"
  assert config_files.resolve(DEFAULT) == DEFAULT


@pytest.mark.parametrize("arg", ["nope", "elsewhere/default.py", "configs/nope.py:x"])
def test_an_unknown_config_names_the_shipped_ones(elsewhere, arg):
  with pytest.raises(ValueError) as e:
    config_files.resolve(arg)
  message = str(e.value)
  assert "\n" not in message and repr(arg.partition(":")[0]) in message
  for p in CONFIGS.glob("[!_]*.py"):
    assert p.stem in message


def test_resolve_argv_rewrites_only_the_config_argument(elsewhere):
  argv = ["main", "--config", "default", "--config.steps=5", "--workdir=w",
          "--", "--config=nope"]
  out = config_files.resolve_argv(argv)
  assert os.path.samefile(out[2], DEFAULT)
  assert out[:2] + out[3:] == argv[:2] + argv[3:]
  one = config_files.resolve_argv(["main", "--config=default:x"])[1]
  assert one.startswith("--config=") and one.endswith(":x")


def test_main_refuses_an_unknown_config_in_one_line(elsewhere, monkeypatch, capsys):
  from icsjax import main
  monkeypatch.setattr(sys, "argv", ["icsjax.main", "--config=nope", "--workdir=w"])
  with pytest.raises(SystemExit) as e:
    main.run()
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: config 'nope'") and err.count("\n") == 1


def test_pyproject_lists_every_package():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    setuptools = tomllib.load(f)["tool"]["setuptools"]
  on_disk = {".".join(p.parent.relative_to(ROOT).parts)
             for p in pathlib.Path(ROOT, "icsjax").rglob("__init__.py")}
  listed = set(setuptools["packages"])
  assert on_disk <= listed
  assert listed - on_disk == {"icsjax.configs"}
  assert os.path.isfile(os.path.join(ROOT, "configs", "__init__.py"))  # editable installs need it
  assert setuptools["package-dir"] == {"icsjax.configs": "configs"}


def test_pyproject_ships_every_data_file_of_the_package():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
  code = {".py", ".pyc"}
  for package_dir in pathlib.Path(ROOT, "icsjax").rglob("__init__.py"):
    package = ".".join(package_dir.parent.relative_to(ROOT).parts)
    data = {p.name for p in package_dir.parent.iterdir()
            if p.is_file() and p.suffix not in code}
    listed = {p.name for pattern in package_data.get(package, [])
              for p in package_dir.parent.glob(pattern)}
    assert data == listed, (package, data - listed)
