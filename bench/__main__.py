"""`python -m bench` = the `ltbench` command."""

from bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
