"""The job queue: one training at a time per GPU, persisted across restarts."""
