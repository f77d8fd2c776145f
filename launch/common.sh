# Sourced by local.sh and node.sh: the interpreter, the signals torchrun forwards, the number of
# ranks on this node, and check_config, which checks the config before torchrun starts anything.

# The interpreter: $PYTHON, else this repository's .venv (the README's set-up), else python3.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${PYTHON:-}" ]; then
    python=$PYTHON
elif [ -x "$repo/.venv/bin/python" ]; then
    python=$repo/.venv/bin/python
else
    python=python3
fi
if ! "$python" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("torch") and u.find_spec("mnist_ddp")))' 2>/dev/null; then
    echo "error: $python cannot import torch and mnist_ddp; install them as README.md's set-up says, or set PYTHON=/path/to/venv/bin/python" >&2
    exit 2
fi
# torchrun's agent forwards these signals to the workers, which save a snapshot and exit 75
# (128 + the signal for a user's SIGINT, SIGHUP, SIGQUIT). SIGUSR1 is not among torchrun's
# defaults, and left unhandled it kills the agent outright (PET_SIGNALS_TO_HANDLE is torchrun's
# --signals-to-handle).
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}

# NAME VALUE MIN: a whole number of at least MIN, or one error line (torchrun would print a traceback).
whole_number() {
    if ! [[ $2 =~ ^[0-9]+$ ]] || (( 10#$2 < $3 )); then
        echo "error: $1=$2 is not a whole number of at least $3; set $1 to one, or leave it out" >&2
        exit 2
    fi
}
if [ -z "${NPROC:-}" ]; then
    gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())')
    NPROC=$(( gpus > 0 ? gpus : 2 ))
fi
whole_number NPROC "$NPROC" 1
whole_number MAX_RESTARTS "${MAX_RESTARTS:-3}" 0

# WORLD_SIZES key=value...: a bad config, or one that cannot run on this many ranks (a comma-separated
# list: each world size an elastic job may take), is one error line here, once: inside torchrun it
# would fail every worker alike, after each restart again.
check_config() {
    "$python" -m mnist_ddp.config --world-size "$@" >/dev/null || exit 2
}
