"""Bundled taxonomy YAML files, loadable with ``Taxonomy.builtin(name)``."""
