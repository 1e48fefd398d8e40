"""Training and serving frameworks: emit a plan as a framework's configuration and read one back."""
