"""The user-facing edge: the CLI, run folders, configs from YAML and the artefacts of a run."""
