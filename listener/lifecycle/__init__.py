"""The steps of an instance's life as job handlers the core runs: provision (create or adopt),
deprovision, and reconcile (compare the desired state with the observed one, repair through
the queues). They speak to the Evolution API through its client and to the database through
the store; they never import ops HTTP, the CLI or the dev tools."""
