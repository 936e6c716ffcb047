"""The plugin system: robots (and later other extensions) arrive as pluggy plugins via entry points."""
