"""Fine-tuning: optimizer, callbacks with progress events, metrics, the run."""
