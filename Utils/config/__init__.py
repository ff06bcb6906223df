"""Configuration: the frozen settings a stage runs with, built once from the flags (Config)."""
