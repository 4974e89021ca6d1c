"""What a kernel that Voilà preheats for ``wfexplore teach`` shares with the server.

Voilà (``--preheat_kernel``) starts the kernel with the server and runs the notebook up to
:func:`wait_for_visitor`; the kernel says it is ready by creating the file named in
``$WFEXPLORE_READY_FILE``, and the server prints its address once that file exists. The
server's default page theme reaches its kernels in ``$WFEXPLORE_VOILA_THEME``. Every Voilà
kernel has ``VOILA_PREHEAT`` set: ``"True"`` in a preheated one, ``"False"`` in one started
for a single visit.
"""

from __future__ import annotations

import os
from pathlib import Path

READY_FILE_ENV = "WFEXPLORE_READY_FILE"
VOILA_THEME_ENV = "WFEXPLORE_VOILA_THEME"
THEMES = ("light", "dark")


def in_voila() -> bool:
    """Whether this kernel was started by Voilà (preheated or for one visit)."""
    return "VOILA_PREHEAT" in os.environ


def wait_for_visitor() -> None:
    """In a kernel Voilà preheats: create the file named by ``$WFEXPLORE_READY_FILE`` (the
    imports before this call are done) and wait for the visitor's request, after which
    ``os.environ`` holds its ``QUERY_STRING`` (``theme=dark``). Anywhere else (JupyterLab, a
    kernel Voilà starts for one visit) it returns at once."""
    if os.environ.get("VOILA_PREHEAT") != "True":
        return
    from voila.utils import wait_for_request

    ready = os.environ.get(READY_FILE_ENV)
    if ready:
        try:
            Path(ready).touch()
        except OSError:  # only a signal to the server: the page must still work
            pass
    wait_for_request()
