"""`evolution-listener demo`: embedded PostgreSQL + simulator + the service + synthetic signups.

Modules: `options` (the command line), `display` (progress and summary output), `run` (the
run itself), `stats` (percentiles and rates shared with the benchmarks).
"""
