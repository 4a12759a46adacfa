#!/bin/bash
# srun's task on every node of multi_node.sbatch: runs "$@" (torchrun ...) and hands it a
# SIGUSR1 or SIGUSR2 as SIGTERM.
#
#   srun ... bash scripts/slurm/node_relay.sh torchrun --nnodes=... ...
#
# Why (see common.sh): srun kills its tasks outright on SIGTERM, so the batch shell sends
# it SIGUSR1, which srun passes on unchanged; SIGTERM is the signal every torchrun version
# forwards to its workers, which then checkpoint and exit. A SIGTERM that SLURM sends the
# step itself (scancel, preemption) reaches torchrun directly as well (SLURM signals the
# step's processes, not only this script), so it is waited through rather than sent a
# second time: a second SIGTERM would cut torchrun's wait for its workers short.
# Exits with the command's exit status.
set -uo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
EQDEQ_FORWARD_SIGNAL=TERM
status=0
eqdeq_supervise "USR1 USR2" "TERM" "$@" || status=$?
exit "${status}"
