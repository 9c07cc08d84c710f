"""The one error of configuration: a file (models, keys) that cannot be used as it is."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration file is missing, unparsable or invalid; the message names the field."""
