# Sourced by local.sh and node.sh: the interpreter, a check of the config before torchrun
# starts anything, the signals torchrun forwards, and the number of ranks on this node.

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
# A bad config is one error line here, once: inside torchrun it would fail every worker and
# again after each of torchrun's restarts.
"$python" -m mnist_ddp.config "$@" >/dev/null || exit 2

# torchrun's agent forwards these signals to the workers, which save a snapshot and exit 75
# (130 for Ctrl-C). SIGUSR1 is not among torchrun's defaults, and left unhandled it kills the
# agent outright (PET_SIGNALS_TO_HANDLE is torchrun's --signals-to-handle).
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
if [ -z "${NPROC:-}" ]; then
    gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())')
    NPROC=$(( gpus > 0 ? gpus : 2 ))
fi
