"""Study configs, one ``get_config()`` per module.

Installed (pyproject.toml), this folder is the package ``icsjax.configs``, and
``python -m icsjax.main --config=NAME`` finds a config by its module name.
"""
