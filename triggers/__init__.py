"""What turns the outside world into jobs: the folder watcher, the reconciler, workers and the CLI."""
