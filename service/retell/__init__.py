"""Retell's JSON shapes as pydantic models: agent and number files, chat objects (``models``), request bodies.

``models`` is loaded first, whichever module is imported: it ends by loading ``flows`` (an agent may hold a
conversation flow), whose shapes are built from its tools, so importing ``flows`` first would find it half made.
"""

from service.retell import models as models  # first: see above
