"""Developer tools, apart from the library: `ltbench perf` (perf.py, with its measuring harness and the WB
reference comparison in wbref.py) and the one-shot GPU check (gpucheck.py, its data in gpudata.py and its
report in gpureport.py). Nothing in the library imports them."""
