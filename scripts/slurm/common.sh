# Shared by the eqdeq sbatch scripts: sourced, not run.
#
# Environment (all optional):
#   EQDEQ_CMD        the training command          (default: "python -m eqdeq_cli.cli train")
#   EQDEQ_OUTPUT_ROOT root of the fixed run dirs    (default: outputs/slurm)
#   EQDEQ_RUN_DIR    the run directory itself        (default: derived from the job, see below)
#   EQDEQ_MAX_REQUEUES  requeues after a time-limit signal (default: 3)
#   EQDEQ_FORWARD_SIGNAL signal passed to the training processes (default: TERM)
#   EQDEQ_DONE_MARKER a file whose presence after a clean exit means training is complete,
#                    so a late USR1 does not requeue (the scripts use RUN_DIR/metrics.json)
#   SRUN, TORCHRUN, SCONTROL  the SLURM / torch commands (default: srun, torchrun, scontrol)
#
# Preemption contract. The scripts ask for `--signal=B:USR1@120`: 120 s before the time
# limit SLURM signals this batch shell only. The shell forwards EQDEQ_FORWARD_SIGNAL to the
# launcher (torchrun forwards SIGTERM to its workers; srun forwards it to its tasks), waits
# until training has finished its step, written checkpoints/last.pt and exited, then
# requeues the job with `scontrol requeue`. The requeued job keeps its job id, so it
# starts in the same fixed run directory and resumes from last.pt (resume=auto).
# A SIGTERM to the shell (scancel, or preemption by the scheduler, which requeues by
# itself) is forwarded the same way but does not requeue.

: "${EQDEQ_CMD:=python -m eqdeq_cli.cli train}"
: "${EQDEQ_OUTPUT_ROOT:=outputs/slurm}"
: "${EQDEQ_MAX_REQUEUES:=3}"
: "${EQDEQ_FORWARD_SIGNAL:=TERM}"
: "${SRUN:=srun}"
: "${TORCHRUN:=torchrun}"
: "${SCONTROL:=scontrol}"
# torchrun >= 2.7 reads these: forward SIGUSR1 as well, and give the workers time to
# checkpoint before SIGKILL (must stay below the signal lead of 120 s).
export TORCHELASTIC_SIGNALS_TO_HANDLE="${TORCHELASTIC_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}"
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT="${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-100}"

eqdeq_log() { echo "[eqdeq-slurm $(date '+%F %T')] $*" >&2; }

# Number of GPUs on this node: SLURM_GPUS_ON_NODE, else the count of CUDA_VISIBLE_DEVICES,
# else 1 (a CPU-only job runs one process).
eqdeq_gpus_on_node() {
  if [[ -n "${SLURM_GPUS_ON_NODE:-}" && "${SLURM_GPUS_ON_NODE}" -gt 0 ]]; then
    echo "${SLURM_GPUS_ON_NODE}"
  elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    local -a ids
    IFS=',' read -r -a ids <<< "${CUDA_VISIBLE_DEVICES}"
    echo "${#ids[@]}"
  else
    echo 1
  fi
}

# The fixed run directory of this job: the same after a requeue (same job id).
#   plain job:  $EQDEQ_OUTPUT_ROOT/$SLURM_JOB_NAME/$SLURM_JOB_ID
#   array task: $EQDEQ_OUTPUT_ROOT/$SLURM_JOB_NAME/$SLURM_ARRAY_JOB_ID/$SLURM_ARRAY_TASK_ID
# EQDEQ_RUN_DIR overrides it (e.g. to resume in a new submission).
eqdeq_run_dir() {
  if [[ -n "${EQDEQ_RUN_DIR:-}" ]]; then
    echo "${EQDEQ_RUN_DIR}"
  elif [[ -n "${SLURM_ARRAY_JOB_ID:-}" && -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    echo "${EQDEQ_OUTPUT_ROOT}/${SLURM_JOB_NAME:-eqdeq}/${SLURM_ARRAY_JOB_ID}/${SLURM_ARRAY_TASK_ID}"
  else
    echo "${EQDEQ_OUTPUT_ROOT}/${SLURM_JOB_NAME:-eqdeq}/${SLURM_JOB_ID:?not inside a SLURM job: set SLURM_JOB_ID or EQDEQ_RUN_DIR}"
  fi
}

# Runs "$@" in the background, forwards USR1/TERM to it, waits for it, and requeues the
# job after a USR1. Returns the command's exit status (0 after a successful requeue).
eqdeq_run_with_requeue() {
  local child status signalled=""
  _eqdeq_on_signal() {
    signalled="$1"
    eqdeq_log "caught SIG$1: sending SIG${EQDEQ_FORWARD_SIGNAL} to pid ${child}"
    kill "-${EQDEQ_FORWARD_SIGNAL}" "${child}" 2>/dev/null || true
  }
  trap '_eqdeq_on_signal USR1' USR1
  trap '_eqdeq_on_signal TERM' TERM
  "$@" &
  child=$!
  # `wait` returns early (status > 128) when a trapped signal arrives: wait again until
  # the child has really exited, then collect its own exit status.
  # (`|| status=$?` keeps `set -e` in the calling script from exiting on a non-zero wait.)
  status=0
  wait "${child}" || status=$?
  while kill -0 "${child}" 2>/dev/null; do
    status=0
    wait "${child}" || status=$?
  done
  if [[ -n "${signalled}" ]] && (( status > 128 )); then
    local final=0
    wait "${child}" || final=$?
    if (( final != 127 )); then status=${final}; fi
  fi
  trap - USR1 TERM
  if [[ "${signalled}" == "USR1" && "${status}" == 0 && -n "${EQDEQ_DONE_MARKER:-}" && -f "${EQDEQ_DONE_MARKER}" ]]; then
    eqdeq_log "training completed (${EQDEQ_DONE_MARKER} exists): not requeueing"
  elif [[ "${signalled}" == "USR1" ]]; then
    local restarts="${SLURM_RESTART_COUNT:-0}"
    if (( restarts < EQDEQ_MAX_REQUEUES )); then
      eqdeq_log "training exited with status ${status}; requeueing job ${SLURM_JOB_ID} (restart $((restarts + 1)) of ${EQDEQ_MAX_REQUEUES})"
      if ${SCONTROL} requeue "${SLURM_JOB_ID}"; then
        return 0
      fi
      eqdeq_log "scontrol requeue failed (is the job requeueable? sbatch --requeue)"
      return 1
    fi
    eqdeq_log "not requeueing: already restarted ${restarts} times (EQDEQ_MAX_REQUEUES=${EQDEQ_MAX_REQUEUES})"
  fi
  return "${status}"
}
