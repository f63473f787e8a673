#!/usr/bin/env bash
# Statement crash soak (docs/reliability.md): a worker process runs IMPORT, DELETE, COMPACT,
# CREATE INDEX, VACUUM, REEMBED, FINETUNE and TRAIN ELIP in a random loop and is killed KILLS
# times (default 1000), by SIGKILL at random moments and at named crash points inside commits;
# after each kill the database is checked against every acknowledged statement. The test suite
# runs the same test with 24 kills. The summary table goes to stderr and to REPORT.
#
# Usage: scripts/crash_soak.sh [KILLS] [REPORT]
set -euo pipefail
cd "$(dirname "$0")/.."
export MIRANTE_SOAK_KILLS="${1:-1000}"
export MIRANTE_SOAK_REPORT="${2:-$PWD/target/crash-soak.txt}"
cargo test -p mirante-tests --test statement_crash -- --nocapture
