"""Many Evolution API servers (SPEC §10): the configured fleet, placement, health per server.

Pure modules only: no I/O besides reading the servers file once at start.
"""
