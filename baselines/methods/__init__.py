"""Reference plasticity methods, one module each."""
