"""How much of the machine other processes take: the CPU time the whole machine spent busy
(/proc/stat) less this process's own (/proc/self/stat), over an interval. The parallel
sections run on the cores left free (engine/parallel.py); the benchmarks judge their figures
by it (bench/measure.py). Where /proc is not there (not Linux) nothing is known: None."""
import os
import time

SHORTEST_S = 0.2            # an interval shorter than this is too short to tell


def cpu_snapshot():
    """(wall s, CPU s the whole machine was busy, CPU s of this process) now, or None where
    /proc is not there (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    busy = sum(fields[:8]) - fields[3] - fields[4]
    mine = int(own[11]) + int(own[12])              # utime + stime, every thread of ours
    return time.perf_counter(), busy / hz, mine / hz


def others_cpu(before, after, cpus=None):
    """The share (0..1) of the machine's CPU time used by *other* processes between two
    snapshots; None if unknown or the interval is too short to tell (< SHORTEST_S)."""
    if before is None or after is None or after[0] - before[0] < SHORTEST_S:
        return None
    cpus = cpus or os.cpu_count() or 1
    others = (after[1] - before[1]) - (after[2] - before[2])
    return max(0.0, min(1.0, others / ((after[0] - before[0]) * cpus)))


def free_cores(others, cpus=None):
    """How many whole cores the others leave: the machine's CPUs times the share they do not
    use, to the nearest core, at least 1 (this process runs whatever the others do)."""
    cpus = cpus or os.cpu_count() or 1
    return max(1, int(cpus * (1.0 - others) + 0.5))
