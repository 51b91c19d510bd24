"""A local emulator of Google's ML REST APIs: AI Platform (ml v1) and Vertex AI (aiplatform v1)
subsets for training jobs, models, endpoints and prediction."""
