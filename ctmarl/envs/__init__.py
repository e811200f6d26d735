"""Batched env families (one module each) and the generic PettingZoo view.

Families are registered by name in :data:`ctmarl.registry.ENVS` and imported only when a scenario
uses them, so optional backends (JAX, StarCraft II) cost nothing until chosen.
"""
