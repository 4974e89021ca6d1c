"""ipywidgets dashboards for JupyterLab and Voilà; import from the submodules.

Each dashboard holds its choices in a traitlets model (``state``) that its controls and
figures follow (:mod:`~wfexplore.widgets.base`), and computes only through
:mod:`wfexplore.experiments`: expensive work is done once and cached; moving a control over
cached data only redraws.
"""
