"""Writes WORKDIR/report/ (figures, report.md, report.html) for a finished study.

  python -m icsjax.report WORKDIR [--out DIR]
"""

import argparse
import sys

from icsjax import report
from icsjax import shards
from icsjax import store
from icsjax import write_errors


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m icsjax.report", description=__doc__)
  parser.add_argument("workdir", help="a study's workdir (python -m icsjax.main --workdir), "
                      "or the parent folder of its shards (shard-I-of-N)")
  parser.add_argument("--out", default=None, help="output folder (default WORKDIR/report)")
  args = parser.parse_args(argv)
  try:
    path = report.write(args.workdir, out=args.out)
  except (store.NoRecords, shards.ShardsDisagree) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except FileNotFoundError as e:
    print(f"error: {args.workdir} holds no icsjax study ({e})", file=sys.stderr)
    return 2
  except write_errors.WriteFailed as e:
    print(f"error: {e}", file=sys.stderr)
    return write_errors.EXIT_CODE
  print(f"report: {path} (and report.html beside it)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
