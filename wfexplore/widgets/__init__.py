"""ipywidgets dashboards for JupyterLab and Voilà; import from the submodules.

Expensive work is done once and cached; moving a control over cached data only redraws.
"""
