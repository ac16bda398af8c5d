"""Job-kind-agnostic machinery: claim, attempt, settle, back off, shut down.

Nothing here knows what a job does (that is `listener.lifecycle`) or how metrics are
exported (that is `listener.ops`, handed in as an observer).
"""
