# Sourced by local.sh and node.sh: the interpreter, the signals torchrun forwards, ranks per node.
python=${PYTHON:-python}
# torchrun's agent forwards these signals to the workers, which save a snapshot and exit 75.
# SIGUSR1 is not among torchrun's defaults, and left unhandled it kills the agent outright
# (PET_SIGNALS_TO_HANDLE is torchrun's --signals-to-handle; torch releases without it ignore it).
export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
if [ -z "${NPROC:-}" ]; then
    gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())')
    NPROC=$(( gpus > 0 ? gpus : 2 ))
fi
