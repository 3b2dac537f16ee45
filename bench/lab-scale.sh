#!/bin/bash
# Brings up a lab of N nodes with the given weft binary and prints: the wall
# time of `weft lab up`, the agents' CPU spent during it, then the mean and
# largest idle CPU per agent (utime+stime from /proc/<pid>/stat over SECONDS),
# how many agents could not be notified by inotify (rung by doorbell sockets,
# or polling where even those fail) and
# how many busy-store retries they logged; then takes the lab down.
#
#   bench/lab-scale.sh BINARY LAB NODES SECONDS [weft lab up options...]
#   bench/lab-scale.sh target/release/weft scale200 200 20 --underlay-cidr 198.18.0.0/23
set -euo pipefail
weft=$1 lab=$2 nodes=$3 seconds=$4
shift 4
tick=$(getconf CLK_TCK)
logs=/run/weft/labs/$lab/nodes
trap '"$weft" lab down --name "$lab" >/dev/null 2>&1 || true' EXIT

binary=$(realpath "$weft")
# The lab's agents: processes of this binary naming the lab's store.
agent_pids() {
    for pid in $(grep -l -a "/run/weft/labs/$lab/store.db" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
        [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$binary" ]] && echo "$pid"
    done
    true
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

start=$(date +%s.%N)
"$weft" lab up --name "$lab" --nodes "$nodes" "$@" >/dev/null
echo "lab up, $nodes nodes: $(echo "$(date +%s.%N) - $start" | bc) s"
total=0
for pid in $(agent_pids); do total=$((total + $(cpu_ticks "$pid"))); done
echo "agents' CPU until up: $(echo "scale=2; $total / $tick" | bc) s"

sleep 3
declare -A before
pids=$(agent_pids)
for pid in $pids; do before[$pid]=$(cpu_ticks "$pid"); done
sleep "$seconds"
sum=0 max=0 count=0
for pid in $pids; do
    used=$(($(cpu_ticks "$pid") - ${before[$pid]}))
    sum=$((sum + used)) count=$((count + 1))
    ((used > max)) && max=$used
done
echo "idle CPU per agent over ${seconds} s ($count agents): mean $(echo "scale=3; 100 * $sum / $count / $tick / $seconds" | bc) %, max $(echo "scale=3; 100 * $max / $tick / $seconds" | bc) % of a core"
echo "agents rung by doorbell sockets (no inotify instance): $(grep -l 'doorbell sockets instead' "$logs"/*/agent.log | wc -l)"
echo "agents polling (neither): $(grep -l 'polling the signal file instead\|watchers poll instead' "$logs"/*/agent.log | wc -l)"
echo "busy-store retries logged: $(cat "$logs"/*/agent.log | grep -c 'store is busy' || true)"
