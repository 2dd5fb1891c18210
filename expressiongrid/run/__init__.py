"""Making a run: the runner, the launch wrapper (one process or accelerate shards), the overnight queue,
the run log and notifications."""
