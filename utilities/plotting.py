"""What every figure shares: matplotlib without a display, one error type, saving a PNG."""
from __future__ import annotations

import os

from utilities.errors import UserError

DPI = 100


class FigureError(UserError, ValueError):
    """Bad input to a figure command; the message names the run folder, file or flag."""


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only). Imported late: a slow import that
    commands drawing nothing should not pay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=DPI)
    pyplot().close(fig)
