"""The training loop's parts: Accelerate setup, run folder, stages, optimizer, schedule of
evaluations and saves, checkpoints, the run log and what stops a run."""
