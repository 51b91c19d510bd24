"""Local executors of the pre-built KFP GCP components: one module per action."""
