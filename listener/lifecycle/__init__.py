"""The steps of an instance's life (provision today; deprovision and reconcile later), as
job handlers the core runs. They speak to the Evolution API through its client and to the
database through the store; they never import ops HTTP, the CLI or the dev tools."""
