#!/usr/bin/env bash
# Run a command while a background training job is paused, and log the pause for the hours it trained.
#   benchmarks/paused.sh runs/long.pgid runs/pauses.tsv -- python -m pytest -q
# The job's process group (its id in the first file, as `setsid nohup ... & echo $! > file` leaves it) gets
# SIGSTOP, the command runs, then SIGCONT; the pause's start and end (epoch seconds, tab-separated) are appended to
# the TSV that benchmarks/cpu_learning_curve.py and cpu_lever_arms.py take as --pauses. Two torch jobs at once on
# 2 cores slow both ~20x (OpenMP spin-waiting): this keeps one at a time. The job resumes even if the command fails.
# Calls for the same job wait for each other (flock on <pgid file>.lock): one caller's SIGCONT never lets the job run
# beside another caller's command.
set -uo pipefail
pgid_file=$1 pauses=$2
shift 2
[[ ${1:-} == "--" ]] && shift
exec 9>"$pgid_file.lock"
flock 9
pgid=$(cat "$pgid_file")
start=$(date +%s.%N)
kill -STOP -- "-$pgid" 2>/dev/null || echo "paused.sh: no process group $pgid (job not running); running the command anyway" >&2
trap 'kill -CONT -- "-$pgid" 2>/dev/null; printf "%s\t%s\n" "$start" "$(date +%s.%N)" >> "$pauses"' EXIT
"$@"
