"""HTTP for operators: `POST /v1/admin/reload` reloads the models folder in place (engine/reload.py).

Behind the admin key (FEATURES_ADMIN_KEY), not the data API key: service/app.py checks it for every path under
ADMIN_PREFIX, and refuses them all with 403 while no admin key is set.
"""

from __future__ import annotations

import os
import signal

from flask import Blueprint, current_app

from engine.errors import Unprocessable
from engine.reload import Reloader
from service.request_steps import json_response

admin = Blueprint("admin", __name__)
ADMIN_PREFIX = "/v1/admin/"
MASTER_PID = "gunicorn_master_pid"  # app.extensions key, set by gunicorn.conf.py when there are several workers


@admin.post("/v1/admin/reload")
def reload_models():
    """Reload this worker now and answer its report; other workers follow through the master's SIGHUP.

    Any failed model makes the answer a 422 problem whose `models` holds the same report, so a deploy script
    that checks the status notices a bad export (the models it could not reload keep serving their old export).
    """
    reloader: Reloader = current_app.extensions["reloader"]
    report = reloader.reload()
    body = {**report.to_dict(), "other_workers_signalled": _signal_other_workers()}
    if report.failed:
        names = ", ".join(report.failed)
        raise Unprocessable(f"reloading {names} failed; each keeps serving its previous export, if it had one "
                            "(models says why)", **body)  # fmt: skip
    return json_response(body)


def _signal_other_workers() -> bool:
    """SIGHUP to the gunicorn master, which forwards it to every worker (this one reloads again, finding nothing
    new); only when gunicorn.conf.py named the master, i.e. with several workers, and while it is our parent."""
    master = current_app.extensions.get(MASTER_PID)
    if master is None or os.getppid() != master:
        return False
    os.kill(master, signal.SIGHUP)
    return True
