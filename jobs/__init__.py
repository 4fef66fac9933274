"""Entry points: the `imagefleet` CLI, run/submit jobs, the embedded S3 and dev helpers."""
