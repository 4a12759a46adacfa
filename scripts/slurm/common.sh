# Shared by the eqdeq sbatch scripts: sourced, not run.
#
# Environment (all optional):
#   EQDEQ_CMD        the training command          (default: "python -m eqdeq_cli.cli train")
#   EQDEQ_OUTPUT_ROOT root of the fixed run dirs    (default: outputs/slurm)
#   EQDEQ_RUN_DIR    the run directory itself        (default: derived from the job, see below)
#   EQDEQ_MAX_REQUEUES  requeues after a time-limit signal (default: 3)
#   EQDEQ_FORWARD_SIGNAL signal the batch shell sends the launcher (default: TERM to torchrun;
#                    USR1 to srun in multi_node.sbatch, see below)
#   EQDEQ_RDZV_PORT  rendezvous port of a multi-node job (default: derived from the job id)
#   EQDEQ_DONE_MARKER a file whose presence after a clean exit means training is complete,
#                    so a late USR1 does not requeue (the scripts use RUN_DIR/metrics.json)
#   SRUN, TORCHRUN, SCONTROL  the SLURM / torch commands (default: srun, torchrun, scontrol)
#
# Preemption contract. The scripts ask for `--signal=B:USR1@120`: 120 s before the time
# limit SLURM signals this batch shell only. The shell forwards EQDEQ_FORWARD_SIGNAL to the
# launcher, waits until training has finished its step, written checkpoints/last.pt and
# exited, then requeues the job with `scontrol requeue`. The requeued job keeps its job id,
# so it starts in the same fixed run directory and resumes from last.pt (resume=auto).
# A SIGTERM to the shell (scancel, or preemption by the scheduler, which requeues by
# itself) is forwarded the same way but does not requeue.
#
# Which signal reaches the workers:
# * torchrun forwards to its workers the signals of its --signals-to-handle option (read
#   from PET_SIGNALS_TO_HANDLE when not given; default SIGTERM,SIGINT,SIGHUP,SIGQUIT), then
#   waits for them (TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds) before SIGKILL. It writes that
#   list into TORCHELASTIC_SIGNALS_TO_HANDLE itself, so exporting that variable changes
#   nothing, and torchrun versions without the option handle only the default four. Any
#   other signal (SIGUSR1 by default) kills torchrun at once and leaves its workers running
#   without a checkpoint. So the scripts only ever send torchrun SIGTERM; the export of
#   PET_SIGNALS_TO_HANDLE below makes a torchrun that has the option also pass on a SIGUSR1
#   or SIGUSR2 sent straight to the job's steps (`scancel --signal=USR1` without --batch).
# * srun answers SIGTERM, SIGHUP and SIGQUIT by killing its tasks (SIGKILL, "forcing job
#   termination") and forwards other signals unchanged. So multi_node.sbatch sends srun
#   SIGUSR1, and node_relay.sh, srun's task on every node, turns it into the SIGTERM that
#   torchrun forwards.
# The training processes stop on any of SIGTERM, SIGUSR1, SIGUSR2, SIGINT
# (eqdeq_cli/engine/signals.py).

: "${EQDEQ_CMD:=python -m eqdeq_cli.cli train}"
: "${EQDEQ_OUTPUT_ROOT:=outputs/slurm}"
: "${EQDEQ_MAX_REQUEUES:=3}"
: "${EQDEQ_FORWARD_SIGNAL:=TERM}"
: "${SRUN:=srun}"
: "${TORCHRUN:=torchrun}"
: "${SCONTROL:=scontrol}"
export PET_SIGNALS_TO_HANDLE="${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1,SIGUSR2}"
# Give the workers time to checkpoint before torchrun's SIGKILL (below the 120 s signal lead;
# torchrun reads it when --shutdown-timeout is not given, older versions wait 30 s).
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

# CPU threads per training process: torchrun sets OMP_NUM_THREADS=1 for every worker when
# it is unset and it starts more than one, so give each of the NPROC processes its share of
# the task's CPUs (SLURM_CPUS_PER_TASK) instead. An OMP_NUM_THREADS already set is kept.
eqdeq_export_threads() {
  local nproc="$1"
  if [[ -z "${OMP_NUM_THREADS:-}" && "${SLURM_CPUS_PER_TASK:-}" =~ ^[0-9]+$ ]]; then
    local n=$(( SLURM_CPUS_PER_TASK / nproc ))
    export OMP_NUM_THREADS=$(( n > 0 ? n : 1 ))
  fi
}

# The rendezvous port of a multi-node job: EQDEQ_RDZV_PORT if set, else
# 20000 + (SLURM_JOB_ID mod 10000). Two jobs whose first node is the same get different
# ports unless their ids differ by a multiple of 10000; the range 20000-29999 lies below
# Linux's ephemeral ports (32768-60999), which outgoing connections take. eqdeq's own
# srun launch without torchrun (eqdeq_cli/engine/distributed.py) derives MASTER_PORT alike.
eqdeq_rdzv_port() {
  local port="${EQDEQ_RDZV_PORT:-}"
  if [[ -z "${port}" ]]; then
    local id="${SLURM_JOB_ID:?not inside a SLURM job: set SLURM_JOB_ID or EQDEQ_RDZV_PORT}"
    port=$(( 20000 + 10#${id} % 10000 ))
  fi
  if ! [[ "${port}" =~ ^[0-9]+$ ]] || (( port < 1024 || port > 65535 )); then
    eqdeq_log "EQDEQ_RDZV_PORT=${port} is not a port number in 1024-65535"
    return 2
  fi
  echo "${port}"
}

# eqdeq_supervise "FORWARDED" "WAITED" CMD...: runs CMD in the background and waits for it.
# Each signal in FORWARDED (e.g. "USR1 TERM") is sent on to CMD as EQDEQ_FORWARD_SIGNAL; a
# signal in WAITED is only waited through (CMD gets it from SLURM itself). Sets
# EQDEQ_SIGNALLED to the last signal caught ("" if none); returns CMD's exit status.
eqdeq_supervise() {
  local forwarded="$1" waited="$2" child status sig
  shift 2
  EQDEQ_SIGNALLED=""
  _eqdeq_forward() {
    EQDEQ_SIGNALLED="$1"
    eqdeq_log "caught SIG$1: sending SIG${EQDEQ_FORWARD_SIGNAL} to pid ${child}"
    kill "-${EQDEQ_FORWARD_SIGNAL}" "${child}" 2>/dev/null || true
  }
  _eqdeq_wait_through() {
    EQDEQ_SIGNALLED="$1"
    eqdeq_log "caught SIG$1: waiting for pid ${child}, which receives it from SLURM too"
  }
  for sig in ${forwarded}; do trap "_eqdeq_forward ${sig}" "${sig}"; done
  for sig in ${waited}; do trap "_eqdeq_wait_through ${sig}" "${sig}"; done
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
  if [[ -n "${EQDEQ_SIGNALLED}" ]] && (( status > 128 )); then
    local final=0
    wait "${child}" || final=$?
    if (( final != 127 )); then status=${final}; fi
  fi
  # shellcheck disable=SC2086
  trap - ${forwarded} ${waited}
  return "${status}"
}

# Runs "$@" in the background, forwards USR1/TERM to it as EQDEQ_FORWARD_SIGNAL, waits for
# it, and requeues the job after a USR1. Returns the command's exit status (0 after a
# successful requeue).
eqdeq_run_with_requeue() {
  local status=0 signalled
  eqdeq_supervise "USR1 TERM" "" "$@" || status=$?
  signalled="${EQDEQ_SIGNALLED}"
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
