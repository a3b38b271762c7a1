#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md in one call, into ONE results file.
#
#   bash benchmarks/gpu.sh                 # on a CUDA machine: --device cuda at GPU sizes, ≤ 8 min in all
#   bash benchmarks/gpu.sh --smoke         # the same scripts on the CPU at toy size (does the script work?)
#   bash benchmarks/gpu.sh --list          # print the planned sections, timeouts and commands; run nothing
#   bash benchmarks/gpu.sh --only NAME     # one section (curve, jets, curvature, certify-mlp, certify-resnet18, surface)
#
# Environment: MLI_BENCH_OUT (folder for the results file, default benchmarks/results), PYTHON
# (interpreter, default python), MLI_COMMIT (commit to record when the tree has no .git).
# Each section runs under `timeout`; a failed or timed-out section is recorded and the rest still
# run; the exit status is 1 if any section failed, 0 otherwise. The results file holds the device
# (nvidia-smi -L and torch's device name), the commit, the load average before and after, and every
# section's output; its path is printed last.
set -euo pipefail

cd "$(dirname "$0")/.."

mode=gpu
list=0
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) mode=smoke ;;
        --list) list=1 ;;
        --only) only="${2:?--only needs a section name}"; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

PY="${PYTHON:-python}"
B=benchmarks

# name | timeout in seconds | command. GPU timeouts add up to 460 s, so with start-up the run stays under 8 min.
if [ "$mode" = gpu ]; then
    sections=(
        "curve|40|$PY $B/curve_speed.py --device cuda"
        "jets|90|$PY $B/jet_speed.py --device cuda --model all"
        "curvature|120|$PY $B/curvature_speed.py --device cuda"
        "certify-mlp|70|$PY $B/certify_speed.py --device cuda --case big-mlp --n 1024 --budget 45"
        "certify-resnet18|80|$PY $B/certify_speed.py --device cuda --case resnet18 --n 1024 --budget 45"
        "surface|60|$PY $B/surface_speed.py --device cuda --n-mlp 1024 --n-resnet 256 --repeats 2"
    )
else
    # toy sizes; generous timeouts because a shared 2-core machine can be 5x slower than a quiet one
    sections=(
        "curve|120|$PY $B/curve_speed.py --device cpu --smoke"
        "jets|120|$PY $B/jet_speed.py --device cpu --smoke --model transformer"
        "curvature|300|$PY $B/curvature_speed.py --device cpu --quick --model resnet --n 4 --eig-budget 30"
        "certify-mlp|120|$PY $B/certify_speed.py --device cpu --case big-mlp --n 16 --budget 5"
        "certify-resnet18|120|$PY $B/certify_speed.py --device cpu --case resnet18 --n 2 --budget 5"
        "surface|120|$PY $B/surface_speed.py --device cpu --steps 3 --n-mlp 4 --n-resnet 2"
    )
fi

if [ -n "$only" ]; then
    kept=()
    for s in "${sections[@]}"; do
        [ "${s%%|*}" = "$only" ] && kept+=("$s")
    done
    if [ ${#kept[@]} -eq 0 ]; then
        echo "gpu.sh: no section '$only' (curve, jets, curvature, certify-mlp, certify-resnet18, surface)" >&2
        exit 2
    fi
    sections=("${kept[@]}")
fi

if [ "$list" = 1 ]; then
    echo "gpu.sh ($mode): planned sections"
    for s in "${sections[@]}"; do
        IFS='|' read -r name limit cmd <<<"$s"
        printf '  %-17s timeout %4ss  %s\n' "$name" "$limit" "$cmd"
    done
    exit 0
fi

if [ "$mode" = gpu ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu.sh: torch sees no CUDA device; run with --smoke for the CPU toy run" >&2
    exit 2
fi

commit() {  # the checked-out commit, read from .git without running git
    if [ -n "${MLI_COMMIT:-}" ]; then echo "$MLI_COMMIT"; return; fi
    local head ref
    head=$(cat .git/HEAD 2>/dev/null) || { echo unknown; return; }
    case "$head" in
        "ref: "*)
            ref=${head#ref: }
            if [ -f ".git/$ref" ]; then cat ".git/$ref"
            else grep -m1 " $ref\$" .git/packed-refs 2>/dev/null | cut -d' ' -f1 || echo "unknown ($ref)"; fi ;;
        *) echo "$head" ;;
    esac
}

outdir="${MLI_BENCH_OUT:-$B/results}"
mkdir -p "$outdir"
file="$outdir/$mode-$(date +%Y%m%d-%H%M%S).txt"

{
    echo "# gpu.sh --$mode, $(date '+%Y-%m-%d %H:%M:%S %Z')"
    echo "commit: $(commit)"
    echo "host: $(uname -n), $(nproc) cores"
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "nvidia-smi -L:"; nvidia-smi -L 2>&1 | sed 's/^/  /' || true
    else
        echo "nvidia-smi: not found"
    fi
    echo "torch: $("$PY" -c 'import torch; print(torch.__version__, "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")' 2>&1)"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
} | tee "$file"

declare -a summary=()
failed=0
start_all=$SECONDS
for s in "${sections[@]}"; do
    IFS='|' read -r name limit cmd <<<"$s"
    printf '\n== section %s (timeout %s s): %s\n' "$name" "$limit" "$cmd" | tee -a "$file"
    t0=$SECONDS
    set +e
    # shellcheck disable=SC2086  # the command is split into words on purpose
    timeout -k 10 "$limit" $cmd 2>&1 | tee -a "$file"
    rc=${PIPESTATUS[0]}
    set -e
    dt=$((SECONDS - t0))
    if [ "$rc" = 0 ]; then status=ok
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="TIMED OUT after $limit s"; failed=1
    else status="FAILED (exit $rc)"; failed=1
    fi
    printf '== end %s: %s, %s s\n' "$name" "$status" "$dt" | tee -a "$file"
    summary+=("$(printf '  %-17s %-24s %4s s (timeout %s s)' "$name" "$status" "$dt" "$limit")")
done

{
    echo
    echo "== summary ($mode, $((SECONDS - start_all)) s in all)"
    printf '%s\n' "${summary[@]}"
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
} | tee -a "$file"
echo "results: $file"
exit "$failed"
