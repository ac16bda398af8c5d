"""The steps of an instance's life after its creation: reconcile (and, next, deprovision).

Imports evolution, policy and db; never ops http, cli or dev.
"""
