"""Reporting: runs -> benchmark tables. collect.py finds and reads runs, aggregate.py builds the cells and the
Table, compare.py sets them beside published numbers, render.py writes Markdown / LaTeX / CSV, html.py one
HTML page; plots.py, stats.py (seed statistics), published.py (the registry of published numbers) and
claims.py (the demo's check of the papers' claims). Training never imports this package."""
