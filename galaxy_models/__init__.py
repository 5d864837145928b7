"""galaxy-pipeline library: labels, storage, models, synthetic surveys (no Prefect imports)."""
