"""A local emulator of the AI Platform (ml v1) REST API: training jobs, models, prediction."""
