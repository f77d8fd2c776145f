#!/usr/bin/env bash
# The device side of a GPU bundle: benchmarks/gpu_bundle.sh copies this file into the bundle as
# run.sh; run it there, on a GPU machine with no network and without omegaconf or PyYAML:
#   bash gpu_bundle/run.sh [--install-only] [--quick] [key=value ...]
# It checks MD5SUMS, installs wheels/ with no index into gpu_bundle/site, uses the checkout the
# bundle sits in (else extracts repo.tar.gz into gpu_bundle/repo), then runs
# `bash benchmarks/gpu_check.sh "$@"` with PYTHONPATH=site:repo, MNIST_DDP_DATA=gpu_bundle/mnist
# and WANDB_MODE=disabled. --install-only stops before that, after an import check.
# PYTHON (default python3) is the interpreter with torch: the wheels are installed for it.
# Everything printed also goes to GPU_CHECK_LOG (default gpu_bundle/gpu_check.log, appended).
set -euo pipefail

BUNDLE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
INSTALL_ONLY=0
if [ "${1:-}" = --install-only ]; then
    INSTALL_ONLY=1
    shift
fi
say() { echo "bundle: $*"; }
die() {
    echo "bundle: error: $*" >&2
    exit 1
}
REBUILD="rebuild the bundle (bash benchmarks/gpu_bundle.sh, where the package registries are reachable)"

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; set PYTHON=/path/to/python3 (the one with torch)"
command -v md5sum >/dev/null || die "md5sum not found; it verifies the bundle (install coreutils)"
cd "$BUNDLE"
LOG=${GPU_CHECK_LOG:-$BUNDLE/gpu_check.log}
# The terminal of a lent machine may be cut off: the log keeps all of it.
exec > >(tee -a "$LOG") 2> >(tee -a "$LOG" >&2)
say "$(date -u '+%Y-%m-%d %H:%M:%S UTC'): bash $0 $*; everything printed also goes to $LOG"
[ -f MD5SUMS ] || die "$BUNDLE/MD5SUMS is missing: copy the whole folder that gpu_bundle.sh built"

# 1. A bundle copied in part, or damaged on the way, fails here and not halfway through a check.
if ! report=$(md5sum -c --quiet MD5SUMS 2>/dev/null); then
    bad=$(sed -n 's/: FAILED.*$//p' <<<"$report")
    first=$(head -1 <<<"$bad")
    count=$(grep -c . <<<"$bad" || true)
    more=$((count > 1 ? count - 1 : 0))
    die "$BUNDLE/${first:-?} does not match MD5SUMS$([ "$more" -gt 0 ] && echo " (and $more more)");" \
        "copy the bundle again, or $REBUILD"
fi
say "md5 ok ($(grep -c . MD5SUMS) files)"

# 2. Install. pip --target installs the whole closure into site/ whatever the image has, so a
# wheel missing from wheels/ fails here, loudly. No configuration and no PIP_* variables: an
# image's own index or find-links must not be consulted (there is no network anyway).
read -r PYVER ARCH < <("$PYTHON" -c 'import platform, sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine())') || true
[ -n "${ARCH:-}" ] || die "$PYTHON does not run; set PYTHON=/path/to/python3 (the one with torch)"
TAG="CPython $PYVER $ARCH"
# What a wheel that does not fit asks for: the build's targets, widened to this interpreter.
WIDEN="with $PYVER in BUNDLE_PYTHONS and manylinux2014_$ARCH in BUNDLE_PLATFORMS"
SITE=$BUNDLE/site
rm -rf "$SITE.new"
if "$PYTHON" -m pip --version >/dev/null 2>&1; then
    how="pip, no index"
    unset_pip=()
    while read -r name; do unset_pip+=(-u "$name"); done < <(compgen -e | grep '^PIP_' || true)
    if ! env "${unset_pip[@]}" PIP_CONFIG_FILE=/dev/null "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        --no-warn-script-location --no-index --find-links "$BUNDLE/wheels" --target "$SITE.new" omegaconf \
        >"$BUNDLE/site.log" 2>&1; then
        die "pip could not install omegaconf from $BUNDLE/wheels for $TAG ($(grep -v '^WARNING' "$BUNDLE/site.log" |
            tail -1)); $REBUILD $WIDEN"
    fi
else
    # No pip in the image: unpack the one wheel per distribution that this interpreter accepts.
    how="unzipped, no pip"
    "$PYTHON" - "$BUNDLE/wheels" "$SITE.new" "$TAG" "$REBUILD $WIDEN" <<'PY'
import platform
import shutil
import sys
import zipfile
from pathlib import Path

wheels, site, tag, rebuild = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
cp = f"cp{sys.version_info[0]}{sys.version_info[1]}"


def accepts(file: str) -> bool:
    """Pure Python 3, or CPython's own ABI on manylinux for this machine (manylinux2014 is glibc
    2.17, older than any image with Python 3.11+)."""
    py, abi, plat = (set(part.split(".")) for part in file[: -len(".whl")].split("-")[-3:])
    if abi == {"none"} and plat == {"any"}:
        return "py3" in py
    machine = platform.machine()
    linux = any(p.startswith("manylinux") and p.endswith("_" + machine) for p in plat)
    return sys.platform == "linux" and cp in py and cp in abi and linux


by_name: dict[str, list[Path]] = {}
for whl in sorted(wheels.glob("*.whl")):
    by_name.setdefault(whl.name.split("-")[0].lower().replace(".", "_"), []).append(whl)
for name, files in sorted(by_name.items()):
    fits = [f for f in files if accepts(f.name)]
    if not fits:
        sys.exit(f"bundle: error: no wheel of {name} in {wheels} fits {tag}; {rebuild}")
    with zipfile.ZipFile(fits[-1]) as z:
        z.extractall(site)
# A wheel's <name>.data/purelib and platlib belong in site itself.
for data in site.glob("*.data"):
    for lib in ("purelib", "platlib"):
        for item in (data / lib).glob("*") if (data / lib).is_dir() else []:
            shutil.move(str(item), site / item.name)
PY
fi
rm -rf "$SITE"
mv "$SITE.new" "$SITE"
# Import from site/ alone, as the job will (python -s: no user site either).
versions=$(PYTHONPATH="$SITE" "$PYTHON" -s -c 'import omegaconf, yaml
print(omegaconf.__version__, yaml.__version__, omegaconf.__file__)' 2>&1) ||
    die "omegaconf does not import from $SITE under $PYTHON: $(tail -1 <<<"$versions"); $REBUILD"
read -r omegaconf_version yaml_version omegaconf_file <<<"$versions"
say "installed omegaconf $omegaconf_version, PyYAML $yaml_version into $SITE for $TAG ($how; imported from $omegaconf_file)"

# 3. The code: the checkout around the bundle (the device tool copies the working tree with the
# git-ignored bundle in it), else the bundle's own copy.
PARENT=$(dirname "$BUNDLE")
if [ -f "$PARENT/benchmarks/gpu_check.sh" ] && [ -f "$PARENT/mnist_ddp/__init__.py" ]; then
    REPO=$PARENT
    say "using the checkout at $REPO"
else
    REPO=$BUNDLE/repo
    rm -rf "$REPO.new"
    mkdir "$REPO.new"
    tar -xzf "$BUNDLE/repo.tar.gz" -C "$REPO.new"
    rm -rf "$REPO"
    mv "$REPO.new" "$REPO"
    say "no checkout around the bundle: extracted repo.tar.gz into $REPO"
fi

# 4. The environment gpu_check.sh and its training runs inherit, then the checks themselves.
export PYTHON
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export MNIST_DDP_DATA="$BUNDLE/mnist"
export WANDB_MODE=disabled
say "MNIST_DDP_DATA=$MNIST_DDP_DATA, WANDB_MODE=disabled, PYTHONPATH=$PYTHONPATH"
if [ "$INSTALL_ONLY" = 1 ]; then
    say "--install-only: not running bash benchmarks/gpu_check.sh${*:+ $*} (in $REPO)"
    exit 0
fi
say "running bash benchmarks/gpu_check.sh${*:+ $*} (in $REPO)"
cd "$REPO"
exec bash benchmarks/gpu_check.sh "$@"
