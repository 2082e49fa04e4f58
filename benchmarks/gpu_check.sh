#!/usr/bin/env bash
# The one prepared GPU check: on one H100/H200, in at most 8 minutes, with a hard limit per step.
#
#   benchmarks/gpu_check.sh                    # on the GPU machine (its own python: torch, triton, lightning, ...)
#   benchmarks/gpu_check.sh --wheels DIR       # also install litdata/jsonargparse/pytest from wheels in DIR
#   benchmarks/gpu_check.sh --dry-run          # no GPU: every step on CPU, tiny shapes, no timing claims
#   benchmarks/gpu_check.sh --help
#
# Steps (each `timeout`-limited; all together within --budget seconds, default 480; dry run 3x):
#   setup       pip install --no-deps --no-index --no-build-isolation -e .  (PYTHONPATH=repo as fallback),
#               plus the wheels of --wheels DIR (optional: nothing below needs them)
#   imports     versions; lit_ortho.activations, lit_ortho.models and the Triton kernels import without
#               litdata or jsonargparse
#   kernels     Triton against eager at GPT-2-small's MLP shape (bf16; shared and per-channel coefficients)
#   activation  fwd+bwd time and peak memory (torch.cuda.max_memory_allocated) vs eager and compiled GELU:
#               GPT-2-small's MLP (12*1024 x 3072) and ConvNeXt-T's four stages (128 x H x W x 4C, NHWC), bf16
#   mlp         Linear -> act -> Linear (Liger's yardstick), GPT-2 small and ConvNeXt-T stage 1, bf16 autocast
#   train       GPT-2 124M training step (lit_ortho.models.GPT, random tokens, bf16 autocast, AdamW, clip 1.0)
#   triton_tests  python -m pytest tests/test_kernels_triton.py on the GPU (needs pytest; else skipped)
#   report      a markdown table to stdout and to $OUT/gpu_check.md (and the steps' JSON/logs in $OUT)
# Targets printed beside the numbers: activation <= 1.3x GELU, MLP block <= 1.05x, train step <= 1.05x time,
# peak memory <= 1.0x.
#
# The wheels folder (optional; prepare it where a package registry is reachable, for the GPU machine's
# Python (`python -V` there) and platform; torch, torchvision, numpy, requests, PyYAML, packaging are
# already there, so --no-deps with the rest of the closure spelled out keeps it to ~35 MB):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d wheels \
#       litdata lightning-utilities boto3 botocore s3transfer jmespath tifffile obstore \
#       jsonargparse docstring-parser typeshed-client pytest iniconfig pluggy pygments
# (or, under that same Python: pip wheel --no-deps -w wheels <the same names>). They are installed with
# `pip install --no-index --find-links DIR <name>`, one package at a time, best effort.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
DRY=0
WHEELS=""
BUDGET=""
usage() { sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --wheels) WHEELS="${2:?--wheels needs a directory}"; shift ;;
        --wheels=*) WHEELS="${1#--wheels=}" ;;
        --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
        --python) PY="${2:?--python needs an interpreter}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -n "${OUT:-}" ]; then WORK="$OUT/gpu_check"; else WORK="$(mktemp -d /tmp/gpu_check.XXXXXX)"; fi
mkdir -p "$WORK"
DRYFLAG=""
SCALE=1  # per-step limits: the GPU's; a dry run (a CPU, the Triton interpreter) gets 3x
[ "$DRY" = 1 ] && DRYFLAG="--dry-run" && SCALE=3
[ -z "$BUDGET" ] && BUDGET=$(( 480 * SCALE ))
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the checkout imports even if pip cannot install it
export PYTHONUNBUFFERED=1
START=$(date +%s)
STEPS_TSV="$WORK/steps.tsv"
: > "$STEPS_TSV"
OVERALL=0

# run_step NAME LIMIT CMD...: run under `timeout`, at most LIMIT s and what is left of the budget (20 s
# are kept for the report); its output goes to $WORK/NAME.log and, abridged, to stdout.
run_step() {
    local name="$1" limit=$(( $2 * SCALE )); shift 2
    local now left status rc t0 t1
    now=$(date +%s); left=$(( BUDGET - (now - START) - 20 ))
    [ "$limit" -gt "$left" ] && limit=$left
    if [ "$limit" -lt 5 ]; then
        printf '%s\tskipped (out of time)\t0\t0\n' "$name" >> "$STEPS_TSV"
        echo "== $name: skipped, out of time"; return 0
    fi
    echo "== $name (limit ${limit}s): $*"
    t0=$(date +%s)
    timeout --signal=TERM --kill-after=5 "$limit" "$@" > "$WORK/$name.log" 2>&1
    rc=$?
    t1=$(date +%s)
    case $rc in
        0) status="ok" ;;
        124|137) status="**timed out**"; OVERALL=1 ;;
        *) status="**failed (rc $rc)**"; OVERALL=1 ;;
    esac
    tail -n 5 "$WORK/$name.log" | cut -c1-300
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( t1 - t0 ))" "$limit" >> "$STEPS_TSV"
    return 0
}

setup() {
    if [ "$DRY" = 1 ]; then
        echo "dry run: would run: $PY -m pip install --no-deps --no-index --no-build-isolation -e ."
        [ -n "$WHEELS" ] && echo "dry run: would install from $WHEELS: litdata jsonargparse pytest"
        return 0
    fi
    "$PY" -m pip install --no-deps --no-index --no-build-isolation -e . \
        || echo "pip install -e . failed: using PYTHONPATH=$ROOT instead"
    if [ -n "$WHEELS" ]; then
        for pkg in litdata "jsonargparse[signatures]" pytest; do
            "$PY" -m pip install --no-index --find-links "$WHEELS" "$pkg" || echo "could not install $pkg from $WHEELS"
        done
    fi
    return 0
}

triton_tests() {
    if ! "$PY" -c "import pytest" 2>/dev/null; then
        echo "pytest is not installed (give it with --wheels): skipped; the kernels step checked Triton against eager"
        echo "SUMMARY: skipped (no pytest)"
        return 0
    fi
    local rc
    if [ "$DRY" = 1 ]; then  # one interpreted test: the wiring, not the kernels
        TRITON_INTERPRET=1 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels_triton.py \
            -k "test_shared_coefficients_match_eager and dtype0 and hermite"
        rc=$?
    else
        "$PY" -m pytest -q -p no:cacheprovider -rfE tests/test_kernels_triton.py
        rc=$?
    fi
    return $rc
}

export -f setup triton_tests
export PY DRY WHEELS

run_step setup 60 bash -c setup
run_step imports 45 "$PY" benchmarks/gpu_check.py imports --json "$WORK/imports.json" $DRYFLAG
run_step kernels 60 "$PY" benchmarks/gpu_check.py kernels --json "$WORK/kernels.json" $DRYFLAG
run_step activation 100 "$PY" benchmarks/gpu_check.py activation --json "$WORK/activation.json" $DRYFLAG
run_step mlp 50 "$PY" benchmarks/gpu_check.py mlp --json "$WORK/mlp.json" $DRYFLAG
run_step train 120 "$PY" benchmarks/gpu_check.py train --json "$WORK/train.json" $DRYFLAG
run_step triton_tests 150 bash -c triton_tests

# the triton tests' summary line, for the report
SUMMARY="$(grep -E "SUMMARY: |[0-9]+ (passed|failed|error)" "$WORK/triton_tests.log" 2>/dev/null | tail -n 1 | sed 's/^SUMMARY: //')"
if [ "$DRY" = 1 ]; then TCMD="TRITON_INTERPRET=1 pytest tests/test_kernels_triton.py -k '...hermite float32' (dry run)"; else TCMD="pytest tests/test_kernels_triton.py"; fi
"$PY" - "$WORK" "$STEPS_TSV" "$DRY" "$SUMMARY" "$TCMD" <<'EOF'
import json, sys
work, tsv, dry, summary, tcmd = sys.argv[1:6]
steps = []
for line in open(tsv):
    name, status, seconds, limit = line.rstrip("\n").split("\t")
    steps.append({"name": name, "status": status, "seconds": int(seconds), "limit": int(limit)})
cmd = "benchmarks/gpu_check.sh" + (" --dry-run" if dry == "1" else "")
json.dump({"steps": steps, "dry_run": dry == "1", "command": cmd}, open(f"{work}/steps.json", "w"))
json.dump({"command": tcmd, "summary": summary or "no result"}, open(f"{work}/triton_tests.json", "w"))
EOF
"$PY" benchmarks/gpu_check.py report "$WORK"
echo "(steps' JSON and logs: $WORK; total $(( $(date +%s) - START )) s)"
exit $OVERALL
