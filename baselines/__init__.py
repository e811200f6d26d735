"""Reference learners (QMIX) and plasticity methods of ctmarl, installed as ``ctmarl_baselines``.

They register through the ``ctmarl.learners`` and ``ctmarl.methods`` entry-point groups in
pyproject.toml, exactly as a third-party package does; ``ctmarl`` itself never imports them.
"""
