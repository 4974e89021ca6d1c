"""Figure factories: tidy frames and curvature objects in, plotly (or seaborn) figures out.

Nothing here computes curvature; import from the submodules (``figures.curvature``,
``figures.teaching``, ``figures.pruning``).
"""
