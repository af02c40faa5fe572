"""What a run executes in: the process (process.py: threads, workers, malloc, seeds), distributed ranks
(dist.py), its run directory (rundir.py) and lock (lock.py), atomic writes (atomic.py), log lines and
progress bars (progress.py), W&B tracking (tracking.py), and a run's job state (jobstate.py)."""
