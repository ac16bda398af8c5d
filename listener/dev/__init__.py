"""Developer tools kept apart from the service: the demo, the Evolution API simulator, the
embedded PostgreSQL wrapper and the one service-process launcher the demo, tests and bench share.

Nothing under `listener/` outside this package imports it, except the CLI's `demo` and
`simulator` subcommands, lazily. Parts of it need the optional extra `[embedded]`.
"""
