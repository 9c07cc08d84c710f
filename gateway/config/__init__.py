"""Configuration shared with workers/: settings, the models.yaml schema and placement rules,
the keys file."""
