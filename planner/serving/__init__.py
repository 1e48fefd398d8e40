"""Serving plans: deployments searched for throughput, latency or cost under SLAs."""
