"""Do two revisions compile a config into the same programs?

  python benchmarks/same_program.py --old=REV [--new=REV] [--config=configs/default.py]

For each group of the config, lowers and compiles one training segment as
``python -m icsjax.main`` would (CPU split into one device per core), keeps
XLA's optimised HLO, and compares the two revisions' programs with names,
metadata and source locations stripped and instructions sorted. Identical
programs run at identical speed and give identical results, which no timing
on a noisy machine can show as sharply. Prints one line per group and exits
1 if any differs. Each revision runs from a temporary git worktree, with this
interpreter.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

# Run inside a revision's worktree: one group's optimised HLO per file. Reads
# either loop API (icsjax.train.make_loop, or GroupProgram before it).
DUMP = r"""
import sys
sys.path.insert(0, ".")
from icsjax import devices
devices.split_cpu_host(devices.auto_cpu_devices())
import jax.numpy as jnp
from ml_collections import config_flags  # noqa: F401  (config files may import it)
import importlib.util
spec = importlib.util.spec_from_file_location("config", sys.argv[1])
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
from icsjax import runner, study
for gr in runner.build_group_runs(study.expand(module.get_config())):
  segment = gr.loop.segment if hasattr(gr, "loop") else gr.program.segment
  text = segment.lower(gr.state, gr.hparams, gr.model_seeds, gr.data,
                       jnp.int32(0)).compile().as_text()
  open(f"{sys.argv[2]}/{gr.group.name}.hlo", "w").write(text)
"""


def canonical(text: str) -> list[str]:
  """Instructions without names, metadata or source locations, sorted."""
  text = text[text.find("\n%"):]
  text = re.sub(r",?\s*metadata=\{[^}]*\}", "", text)
  text = re.sub(r", stack_frame_id=\d+", "", text)
  text = re.sub(r"%[\w.\-]+", "%x", text)
  text = re.sub(r"\b(fusion|wrapped|region|body|cond|closed_call|pjit|jit|call|while|"
                r"reduce|add|max|min|mul)[\w.\-]*", r"\1", text)
  return sorted(line.strip() for line in text.splitlines() if line.strip())


def dump(rev: str, config: str, out: str) -> None:
  with tempfile.TemporaryDirectory() as tree:
    subprocess.run(["git", "worktree", "add", "--detach", "-q", tree, rev], check=True)
    try:
      subprocess.run([sys.executable, "-c", DUMP, os.path.join(tree, config), out],
                     cwd=tree, check=True, capture_output=True, text=True)
    finally:
      subprocess.run(["git", "worktree", "remove", "--force", tree], check=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--old", required=True)
  parser.add_argument("--new", default="HEAD")
  parser.add_argument("--config", default="configs/default.py")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as old, tempfile.TemporaryDirectory() as new:
    dump(args.old, args.config, old)
    dump(args.new, args.config, new)
    groups = sorted(os.listdir(old))
    same = groups == sorted(os.listdir(new))
    for name in groups:
      a = canonical(open(os.path.join(old, name)).read())
      b = canonical(open(os.path.join(new, name)).read()) if os.path.exists(
          os.path.join(new, name)) else []
      differing = len(set(a) ^ set(b)) if a != b else 0
      same &= a == b
      print(f"{name[:-4]:28s} {len(a):7d} instructions  "
            f"{'identical' if a == b else f'DIFFERS ({differing} distinct lines)'}")
  print(f"verdict: {'the same programs' if same else 'programs differ'} "
        f"({args.old} vs {args.new}, {args.config})")
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
