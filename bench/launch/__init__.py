"""Launching runs: one experiment in this process (run.py), SLURM jobs through submitit (submit.py), `ltbench
status` (jobs.py), the demo (demo.py), `ltbench fetch` (fetch.py), and the `ltbench run` command line that
the demo, perf and the GPU check start as subprocesses (local.py)."""
