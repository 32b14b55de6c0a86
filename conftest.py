"""Root conftest: load the scratchnet core plugin, the report plugin and every family plugin."""
from experiments.families import plugin_modules

pytest_plugins = ["experiments.plugin", "experiments.report.plugin", *plugin_modules()]
