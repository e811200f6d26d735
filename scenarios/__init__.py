"""The standard scenario definitions (YAML data), installed as ``ctmarl_scenarios``."""
