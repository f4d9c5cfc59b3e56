#!/bin/sh
# Entry point of the job image: run one cohortsync command (default `sync --json`) and turn its exit
# code (docs/operations.md) into what a scheduler that knows only success and failure should do.
#   0 ok, 1 partial, 2 usage/config, 5 needs a person  -> passed through: the execution fails, no retry
#   3 another live run holds the lock                  -> 0: that run does the work (logged)
#   4 transient after the source's own retries         -> run again here, JOB_TRANSIENT_RETRIES times
#                                                         (default 2), JOB_RETRY_DELAY_S apart (900)
# The job's replica timeout must cover the retries. Log lines are JSON like cohortsync's own.
set -u
retries=${JOB_TRANSIENT_RETRIES:-2}
delay=${JOB_RETRY_DELAY_S:-900}
[ "$#" -gt 0 ] || set -- sync --json
log() {
  printf '{"timestamp": "%s", "level": "%s", "logger": "cohortsync.job", "event": "%s", "message": "%s", "figures": {"exit_code": %s, "attempt": %s}}\n' \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" "$3" "$4" "$5" >&2
}
attempt=1
while :; do
  cohortsync "$@"
  code=$?
  case "$code" in
    3)
      log warning job.locked "another run holds the lock; this execution does nothing" "$code" "$attempt"
      exit 0 ;;
    4)
      if [ "$attempt" -le "$retries" ]; then
        log warning job.retry "transient failure; running again in ${delay}s" "$code" "$attempt"
        attempt=$((attempt + 1))
        sleep "$delay"
        continue
      fi
      log error job.failed "transient failure after $attempt attempts" "$code" "$attempt"
      exit "$code" ;;
    *)
      exit "$code" ;;
  esac
done
