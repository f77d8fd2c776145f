#!/usr/bin/env bash
# Build a bundle for a lent GPU machine that has no network: its image has Python with torch,
# numpy, scipy, scikit-learn, matplotlib, pillow and tqdm, but not omegaconf or PyYAML, and
# shared/ (MNIST) does not travel there. Run this on a machine that reaches the package
# registries; on the GPU machine, `bash gpu_bundle/run.sh [--quick]` verifies, installs with no
# index, and runs benchmarks/gpu_check.sh (see benchmarks/gpu_bundle_run.sh).
#   bash benchmarks/gpu_bundle.sh [--data DIR] [OUT]          OUT defaults to gpu_bundle/ here
# OUT holds:
#   wheels/      omegaconf and everything it needs, offline: pure-Python wheels once (built from
#                sdists where PyPI has no wheel, e.g. antlr4-python3-runtime 4.9.x that
#                omegaconf 2.3 pins), binary ones (PyYAML) for each CPython in BUNDLE_PYTHONS on
#                each platform in BUNDLE_PLATFORMS. No wandb: mnist_ddp/observe/tracking.py imports it
#                only inside start() and log_images(), after resolved_mode() != "disabled", and
#                gpu_check.py (WANDB_MODE=disabled) and gpu.sh (wandb.mode=disabled) never track.
#   mnist/       the four IDX files gzipped (data.root reads .gz directly: download.find_idx_files)
#   repo.tar.gz  this checkout's files as the GPU machine's copy of the working tree would be:
#                tracked and untracked-but-not-ignored ones, so the bundle alone is enough
#   run.sh       the device side; MD5SUMS, which run.sh checks with md5sum -c before anything
# Environment:
#   MNIST_DDP_DATA             MNIST folder (else ../shared/data/mnist); --data DIR wins over it
#   MNIST_DDP_BUNDLE_ANY_DATA  1: accept IDX files that are not the real MNIST (tests' tiny fakes)
#   PYTHON                     the interpreter whose pip downloads (else .venv/bin/python, python3)
#   BUNDLE_PYTHONS             CPython versions for binary wheels (default "3.11 3.12 3.13")
#   BUNDLE_PLATFORMS           wheel platforms (default "manylinux2014_x86_64 manylinux2014_aarch64")
#   BUNDLE_OMEGACONF           the requirement bundled (default: omegaconf==the version PYTHON has,
#                              the release this checkout's tests ran with; pyproject.toml's range
#                              would let a later rebuild carry a release no test has seen)
set -euo pipefail

die() {
    echo "gpu_bundle.sh: error: $*" >&2
    exit 1
}
say() { echo "bundle: $*"; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
DATA=${MNIST_DDP_DATA:-}
OUT=
while [ $# -gt 0 ]; do
    case $1 in
    --data) [ $# -ge 2 ] || die "--data needs a folder: --data /path/to/mnist"; DATA=$2; shift 2 ;;
    --data=*) DATA=${1#--data=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option $1; usage: bash benchmarks/gpu_bundle.sh [--data DIR] [OUT]" ;;
    *) [ -z "$OUT" ] || die "one OUT folder only (got $OUT and $1)"; OUT=$1; shift ;;
    esac
done
# Paths the caller gives are relative to where they ran the command (nothing has changed
# directory yet); the default data folder is shared/ beside this checkout, as CI lays it out.
OUT=$(realpath -m -- "${OUT:-$REPO/gpu_bundle}")
DATA=$(realpath -m -- "${DATA:-$REPO/../shared/data/mnist}")
ANY_DATA=${MNIST_DDP_BUNDLE_ANY_DATA:-0}
PYTHONS=${BUNDLE_PYTHONS:-3.11 3.12 3.13}
PLATFORMS=${BUNDLE_PLATFORMS:-manylinux2014_x86_64 manylinux2014_aarch64}
if [ -z "${PYTHON:-}" ] && [ -x "$REPO/.venv/bin/python" ]; then
    PYTHON=$REPO/.venv/bin/python
fi
PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip; set PYTHON=/path/to/python3 with pip"
command -v git >/dev/null || die "git not found; it lists the files for repo.tar.gz (apt-get install git)"
git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1 || die "$REPO is not a git checkout; run this script in a clone"

# Rebuilding replaces OUT whole, so refuse a folder that is not an earlier bundle.
if [ -e "$OUT" ] && [ ! -f "$OUT/MD5SUMS" ]; then
    die "$OUT exists and is not a bundle (no MD5SUMS); remove it or give another OUT"
fi
mkdir -p "$(dirname "$OUT")"
# Build beside OUT and swap at the end: a failed build leaves the previous bundle as it was.
STAGE=$(mktemp -d "$(dirname "$OUT")/.$(basename "$OUT").XXXXXX")
WORK=$(mktemp -d)
cleanup() {
    # Stop this script's own parallel downloads first: they would recreate folders under STAGE.
    local running
    running=$(jobs -p)
    if [ -n "$running" ]; then
        # shellcheck disable=SC2086 # process ids, one word each
        kill $running 2>/dev/null || true
        wait 2>/dev/null || true
    fi
    rm -rf "$STAGE" "$WORK"
}
trap cleanup EXIT
mkdir "$STAGE/wheels" "$STAGE/mnist"
START=$SECONDS

# pip with no configuration and no PIP_* variables: the offline check below must see only
# wheels/, not a configured find-links or index (this machine's pip has both).
bare_pip() {
    local unset=()
    while read -r name; do unset+=(-u "$name"); done < <(compgen -e | grep '^PIP_' || true)
    env "${unset[@]}" PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 "$PYTHON" -m pip "$@"
}

# 1. MNIST first: it needs no network, so a wrong data folder fails in a second.
NAMES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
declare -A REAL_MD5=(
    [train-images-idx3-ubyte]=6bbc9ace898e44ae57da46a324031adb
    [train-labels-idx1-ubyte]=a25bea736e30d166cdddb491f175f624
    [t10k-images-idx3-ubyte]=2646ac647ad5339dbf082846283269ea
    [t10k-labels-idx1-ubyte]=27ae3e4e09519cfbb04c329615203637
)
[ -d "$DATA" ] || die "no MNIST folder $DATA; point MNIST_DDP_DATA=/path or --data at the four IDX files"
if [ "$ANY_DATA" = 1 ]; then
    say "MNIST_DDP_BUNDLE_ANY_DATA=1: $DATA is NOT checked against real MNIST's md5s (test data only)"
fi
declare -A SOURCE=()
for name in "${NAMES[@]}"; do
    src=
    for candidate in "$DATA/$name" "$DATA/$name.gz" "$DATA/MNIST/raw/$name" "$DATA/MNIST/raw/$name.gz"; do
        if [ -f "$candidate" ]; then src=$candidate && break; fi
    done
    [ -n "$src" ] || die "$DATA has no $name (raw or .gz); point MNIST_DDP_DATA=/path or --data at MNIST"
    SOURCE[$name]=$src
    [ "$ANY_DATA" = 1 ] && continue
    # The README's md5s are of the uncompressed files, so a .gz source is checked decompressed.
    if [[ $src == *.gz ]]; then
        sum=$(gzip -dc -- "$src" | md5sum) || die "$src is not a readable gzip file; fetch it again"
    else
        sum=$(md5sum <"$src")
    fi
    sum=${sum%% *}
    [ "$sum" = "${REAL_MD5[$name]}" ] || die "$src: md5 $sum is not real MNIST's ${REAL_MD5[$name]}" \
        "(damaged or another file); replace it, or set MNIST_DDP_BUNDLE_ANY_DATA=1 for test data"
done
for name in "${NAMES[@]}"; do
    src=${SOURCE[$name]}
    if [[ $src == *.gz ]]; then cp -- "$src" "$STAGE/mnist/$name.gz"; else gzip -n -c -- "$src" >"$STAGE/mnist/$name.gz"; fi
done
[ "$ANY_DATA" = 1 ] || say "mnist: the four files match real MNIST's md5s"
say "mnist: $(du -sh "$STAGE/mnist" | cut -f1) gzipped from $DATA"

# 2. Wheels: omegaconf pinned to the release this interpreter has (and the tests used).
if [ -z "${BUNDLE_OMEGACONF:-}" ]; then
    tested=$("$PYTHON" -c 'import omegaconf; print(omegaconf.__version__)' 2>/dev/null) ||
        die "$PYTHON has no omegaconf to pin; install the project (pip install -e .) or set BUNDLE_OMEGACONF=omegaconf==X.Y.Z"
    BUNDLE_OMEGACONF=omegaconf==$tested
fi
SPEC=$BUNDLE_OMEGACONF
# pip wheel resolves the whole closure for this interpreter and builds a wheel from any sdist.
if ! "$PYTHON" -m pip wheel --quiet --disable-pip-version-check -w "$WORK/closure" "$SPEC" >"$WORK/wheel.log" 2>&1; then
    die "pip wheel '$SPEC' failed (are the package registries reachable?): $(grep -v '^WARNING' "$WORK/wheel.log" | tail -1)"
fi
BINARY=()
for whl in "$WORK/closure"/*.whl; do
    file=$(basename "$whl")
    if [[ $file == *-none-any.whl ]]; then
        cp -- "$whl" "$STAGE/wheels/" # pure Python: one wheel for any Python 3.11+
    else
        BINARY+=("$(cut -d- -f1 <<<"$file")==$(cut -d- -f2 <<<"$file")")
    fi
done
# Binary wheels for every target, the same version as the closure's, fetched in parallel.
pids=() whats=() logs=()
for req in "${BINARY[@]}"; do
    for py in $PYTHONS; do
        for platform in $PLATFORMS; do
            log="$WORK/download-$py-$platform-${req%%==*}.log"
            "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
                --python-version "$py" --platform "$platform" -d "$STAGE/wheels" "$req" >"$log" 2>&1 &
            pids+=("$!") whats+=("$req for CPython $py on $platform") logs+=("$log")
        done
    done
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || die "no wheel of ${whats[$i]} ($(grep -v '^WARNING' "${logs[$i]}" | tail -1));" \
        "drop that target from BUNDLE_PYTHONS/BUNDLE_PLATFORMS"
done
# Prove now, offline, that every target resolves the closure from wheels/ alone (in parallel).
pids=() whats=() logs=()
for py in $PYTHONS; do
    for platform in $PLATFORMS; do
        log="$WORK/check-$py-$platform.log"
        bare_pip download --quiet --no-index --find-links "$STAGE/wheels" --only-binary=:all: --python-version "$py" \
            --platform "$platform" -d "$WORK/check-$py-$platform" "$SPEC" >"$log" 2>&1 &
        pids+=("$!") whats+=("CPython $py on $platform") logs+=("$log")
    done
done
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || die "wheels/ does not install '$SPEC' offline for ${whats[$i]}: $(tail -1 "${logs[$i]}")"
done
say "wheels: $(find "$STAGE/wheels" -name '*.whl' -printf '%f\n' | cut -d- -f1,2 | sort | uniq -c |
    awk '{ sub("-", " ", $2); printf "%s%s%s", (NR > 1 ? ", " : ""), $2, ($1 > 1 ? " (" $1 " wheels)" : "") }')"
say "wheels: '$SPEC' resolves offline for CPython $PYTHONS on $PLATFORMS"

# 3. The checkout's files, as the device tool copies a working tree (tracked, plus untracked
# files git does not ignore), less OUT and the staging folder if they lie inside the checkout.
skip=()
for dir in "$OUT" "$STAGE"; do
    case $dir/ in "$REPO"/*) skip+=("${dir#"$REPO"/}/") ;; esac
done
git -C "$REPO" ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' path; do
    for prefix in "${skip[@]}"; do [[ $path == "$prefix"* ]] && continue 2; done
    # A tracked file deleted in the working tree is not part of its state.
    if [ -e "$REPO/$path" ] || [ -L "$REPO/$path" ]; then printf '%s\0' "$path"; fi
done >"$WORK/files"
tar -C "$REPO" --null -T "$WORK/files" --sort=name --owner=0 --group=0 --numeric-owner -cf - |
    gzip -n >"$STAGE/repo.tar.gz"
state=$(git -C "$REPO" rev-parse --short HEAD)
[ -z "$(git -C "$REPO" status --porcelain | head -1)" ] || state="$state plus working-tree changes"
say "repo.tar.gz: $(tr -cd '\0' <"$WORK/files" | wc -c) files of $REPO ($state), $(du -sh "$STAGE/repo.tar.gz" | cut -f1)"

# 4. The device side and the checksums it verifies first.
cp -- "$REPO/benchmarks/gpu_bundle_run.sh" "$STAGE/run.sh"
chmod +x "$STAGE/run.sh"
(cd "$STAGE" && find . -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$WORK/MD5SUMS"
mv "$WORK/MD5SUMS" "$STAGE/MD5SUMS"

rm -rf -- "$OUT"
mv -- "$STAGE" "$OUT"
chmod 755 "$OUT" # mktemp made it 700
say "$OUT: $(du -sh "$OUT" | cut -f1) in $((SECONDS - START)) s"
# The one shot on a lent GPU is easy to waste: say exactly what to do with the bundle.
rel=$(basename "$OUT")
case $OUT/ in "$REPO"/*) rel=${OUT#"$REPO"/} ;; esac
say "next: $rel/ is git-ignored, so a copy of what git tracks leaves it behind: copy it with the checkout"
say "  (the device tool: carry=[\"$rel\"]); then on the GPU machine, in the checkout:"
say "  bash $rel/run.sh --quick     # first: checks 1-5 and 8 and the targets, 3-5 minutes; log in $rel/gpu_check.log"
say "  bash $rel/run.sh             # then, if there is time: every check and the full timings, 5.5-9 minutes"
