#!/usr/bin/env bash
# Memory and evaluation-time figures for a large corpus vocabulary (the issue "Fast by default
# and everywhere"): ~300 MB of Python sources prepared with a corpus vocabulary (thousands of
# symbols), then
#   charloom train DATA --iters 5     peak RSS (target < 1.5 GB), share of the run outside
#                                     training steps (target: evaluation < 10 %)
#   charloom eval RUN 1MB.txt         peak RSS (target < 1 GB) and wall time
# Every figure is measured with /usr/bin/time -v (apt-get install time). Nothing is written
# outside WORKDIR; the text is built there from the running Python's stdlib and site-packages.
#
# Usage: bench/memory_check.sh [WORKDIR] [MB]     (defaults /tmp/charloom-memcheck, 300)
#   PYTHON=/path/to/python picks the interpreter that has charloom (default: python).
# Measure on a quiet machine: the load average is printed first and last for that reason.
set -euo pipefail

PY=${PYTHON:-python}
WORK=${1:-/tmp/charloom-memcheck}
MB=${2:-300}
mkdir -p "$WORK"
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; $(uptime)"

if [ ! -s "$WORK/py.txt" ]; then
  "$PY" - "$WORK/py.txt" "$MB" <<'EOF'
import sys, sysconfig
from pathlib import Path

out, target = Path(sys.argv[1]), int(sys.argv[2]) * 1_000_000
roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
written = 0
with out.open("w", encoding="utf-8") as fh:
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            fh.write(text)
            written += len(text.encode("utf-8"))
            if written >= target:
                sys.exit(0)
print(f"only {written / 1e6:.0f} MB of Python sources found", file=sys.stderr)
EOF
fi

# measure LABEL COMMAND...: run it under /usr/bin/time; print peak RSS and wall time.
measure() {
  local label=$1
  shift
  /usr/bin/time -v -o "$WORK/$label.time" "$@" > "$WORK/$label.out" 2> "$WORK/$label.err"
  local rss wall
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$WORK/$label.time")
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$WORK/$label.time")
  printf '%-8s peak RSS %6.0f MB   wall %s\n' "$label" "$((rss / 1024))" "$wall"
}

measure prepare "$PY" -m charloom prepare "$WORK/py.txt" --out "$WORK/data" --overwrite --quiet
"$PY" - "$WORK/data/meta.json" <<'EOF'
import json
import sys

m = json.load(open(sys.argv[1]))
print(f"         {m['length']:,} ids, vocabulary {m['vocab']['size']:,} symbols ({m['dtype']})")
EOF

# --no-bar rather than --quiet, so that the run prints the share it spent outside steps.
measure train "$PY" -m charloom train "$WORK/data" --iters 5 --no-bar --out "$WORK/run" --overwrite
grep -o 'done: .*checkpoints)' "$WORK/train.err" | sed 's/^/         /'

# 1 MB (1,000,000 characters) from the end of the text: held out, every character known.
"$PY" - "$WORK/py.txt" "$WORK/eval1mb.txt" <<'EOF'
import os
import sys

with open(sys.argv[1], "rb") as fh:
    fh.seek(max(0, os.path.getsize(sys.argv[1]) - 1_500_000))
    fh.readline()  # start at a line (so at a character) boundary
    text = fh.read().decode("utf-8")[-1_000_000:]
with open(sys.argv[2], "w", encoding="utf-8") as out:
    out.write(text)
EOF
measure eval "$PY" -m charloom eval "$WORK/run" "$WORK/eval1mb.txt" --checkpoint latest
sed 's/^/         /' "$WORK/eval.out"
echo "load: $(uptime)"
