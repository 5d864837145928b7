#!/usr/bin/env bash
# The GPU check (issue 15): one script for one device lease of at most 8 minutes. It installs what
# the device image lacks from the carried wheels, runs the GPU-marked tests, then
# benchmarks/gpu_bench.py: training images/s of ResNet50 and CS_ResNet50 (eager and torch.compile,
# bf16 autocast, channels-last), the real shard loader feeding training, inference images/s from
# shards and from JPEG bytes, and a short real-data training sanity check. It prints one markdown
# table and writes $OUT/gpu.json (benchmarks/out/gpu.json where OUT is unset); it exits 1 if any
# step failed or ran out of time (its row says which).
#
# 1. Prepare the carry folder here, once (no make, no GPU; reads ../shared/gz2, downloads wheels
#    from PyPI; about 41 MiB, under the 64 MiB a run may carry; .carry/ is git-ignored):
#        benchmarks/gpu.sh --prepare
# 2. Run it with the device tool, in one call:
#        run(command="bash benchmarks/gpu.sh", carry=[".carry/gpu"], timeout_s=480)
#    The table is the end of output_tail; gpu.json and gpu.log (all of the output) come back under
#    files_at.
#
# Time caps (seconds): install 30, tests 60, train+loader+infer_shards 80, sanity+infer_jpeg 150,
# compile 120: at most 440 s, typically well under. A step that hits its cap loses only what it had
# not written yet (the JSON is written after every measurement).
#
# Dry run (CPU, tiny sizes, the interpreter of $PYTHON or .venv, no install; what make test runs,
# through tests/test_gpu_script.py, so this script cannot rot between leases):
#        benchmarks/gpu.sh --dry-run
set -euo pipefail
cd "$(dirname "$0")/.."

carry=${GPU_CARRY:-.carry/gpu}
mode=device
case "${1:-}" in
    "") ;;
    --dry-run) mode=dry ;;
    --prepare) mode=prepare ;;
    *) echo "usage: $0 [--dry-run | --prepare]" >&2; exit 2 ;;
esac

local_python() {
    if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; elif [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi
}

if [ "$mode" = prepare ]; then
    py=$(local_python)
    rm -rf "$carry"
    mkdir -p "$carry"
    "$py" benchmarks/gpu_bench.py --prepare "$carry"
    # The device's python3 is CPython 3.12 on x86_64 Linux (.library/device/KINDS.md).
    # shellcheck disable=SC2046
    "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$carry/wheels" $("$py" benchmarks/gpu_bench.py --requirements)
    size=$(du -sm "$carry" | cut -f1)
    echo "$carry: ${size} MiB ($(find "$carry/store" -name '*.tar' | wc -l) shards, $(find "$carry/jpegs" -name '*.jpg' | wc -l) JPEGs, $(find "$carry/wheels" -name '*.whl' | wc -l) wheels)"
    if [ "$size" -gt 60 ]; then echo "too large to carry beside the working tree (64 MiB in all)" >&2; exit 1; fi
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
flags=()
collect=()
if [ "$mode" = dry ]; then
    py=$(local_python)
    flags=(--dry-run)
    collect=(--collect-only)  # they would only skip: collecting them shows they still import
    # one process: its imports are most of a dry run's time
    groups=("train,compile,loader,sanity,infer_shards,infer_jpeg")
    caps=(120)
else
    if [ -n "${OUT:-}" ]; then exec > >(tee -a "$OUT/gpu.log") 2>&1; fi  # the whole log comes back too
    py=python3  # the device image's, with its PyTorch
    if ! ls "$carry"/wheels/*.whl >/dev/null 2>&1; then
        echo "no wheels in $carry: run benchmarks/gpu.sh --prepare here and carry $carry" >&2
        exit 1
    fi
    echo "== install (at most 30 s)"
    timeout 30 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$work/site" "$carry"/wheels/*.whl
    export PYTHONPATH="$work/site"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    df -h /dev/shm || true  # the loader workers' batches pass through it
    # each group in its own process under its own cap; compile last, as the likeliest to overrun
    groups=("train,loader,infer_shards" "sanity,infer_jpeg" "compile")
    caps=(80 150 120)
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
bench=("$py" benchmarks/gpu_bench.py "${flags[@]}" --work "$work" --carry "$carry")

# The GPU-marked tests (they skip without CUDA). No conftest: its fixtures need boto3 and moto,
# which the device image lacks; GPU tests make what they need themselves.
mapfile -t gpu_tests < <(grep -rl --include='test_*.py' 'pytest.mark.gpu' tests || true)
echo "== tests -m gpu: ${gpu_tests[*]:-none} (at most 60 s)"
pytest_rc=5
summary="no GPU-marked tests"
if [ "${#gpu_tests[@]}" -gt 0 ]; then
    pytest_rc=0
    timeout 60 "$py" -m pytest -m gpu --noconftest -p no:cacheprovider -q "${collect[@]}" "${gpu_tests[@]}" >"$work/pytest.log" 2>&1 \
        || pytest_rc=$?
    cat "$work/pytest.log"
    summary=$(grep -E ' (passed|failed|skipped|errors?|deselected)' "$work/pytest.log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//' || true)
fi

fresh=(--fresh)  # the first group starts a new JSON; the others add to it
for i in "${!groups[@]}"; do
    echo "== ${groups[$i]} (at most ${caps[$i]} s)"
    started=$SECONDS
    rc=0
    timeout --kill-after=10 "${caps[$i]}" "${bench[@]}" "${fresh[@]}" --steps "${groups[$i]}" || rc=$?
    fresh=()
    echo "== ${groups[$i]}: exit $rc after $((SECONDS - started)) s"
done
echo
"${bench[@]}" --steps report --pytest-rc "$pytest_rc" --pytest-summary "$summary"
