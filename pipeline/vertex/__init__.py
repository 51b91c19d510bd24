"""The Vertex AI components' code (`PLATFORM=vertex`), run in the base image.

One small module per action, as in kfp_component.google (0.2.5): `tune` (hyperparameter
tuning job), `train` (custom job), `deploy` (model upload, endpoint, traffic); `client` holds
one method per aiplatform v1 call, `jobs` the step identity, retries and waiting, `study` the
translation of the ml v1 tuning settings, `launcher` the command line of the component specs
in pipeline/components/vertex/. Cloud path: it never imports `pipeline.local`.
"""
