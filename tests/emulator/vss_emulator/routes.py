"""The emulator's HTTP front: moto's own routes, and the harness's `/_sim/...` control API."""

from __future__ import annotations

import json
from typing import Any

from moto.moto_server.werkzeug_app import (

    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.wrappers import Request, Response

from .model import SIM
from .blocks import block_versions
from .events import events_rule
from .keys import create_key
from .protection import PROTECTION
from .tiering import TIMING
from .seeding import age_snapshots, landing_zone, seed_history


class QuietHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # one line per call is noise here
        pass


class App:
    def __init__(self) -> None:
        self.moto = DomainDispatcherApplication(create_backend_app)

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if not path.startswith("/_sim/"):
            return self.moto(environ, start_response)
        request = Request(environ)
        try:
            if path == "/_sim/instances" and request.method == "POST":
                SIM.configure(json.loads(request.get_data() or b"{}"))
                body: Any = {"ok": True}
            elif path == "/_sim/ebs" and request.method == "POST":
                SIM.configure_ebs(json.loads(request.get_data() or b"{}"))
                body = {"ok": True}
            elif path == "/_sim/recycle-bin" and request.method == "POST":
                PROTECTION.add_rule(json.loads(request.get_data() or b"{}"))
                body = {"ok": True}
            elif path == "/_sim/blocks" and request.method == "POST":
                body = {"versions": block_versions(json.loads(request.get_data() or b"{}"))}
            elif path == "/_sim/age" and request.method == "POST":
                body = {"aged": age_snapshots(json.loads(request.get_data() or b"{}"))}
            elif path == "/_sim/history" and request.method == "POST":
                made = seed_history(json.loads(request.get_data() or b"{}"))
                body = {
                    "snapshots": sum(len(m["snapshots"]) + len(m["copies"]) for m in made),
                    "sets": made,
                }
            elif path == "/_sim/kms-key" and request.method == "POST":
                body = create_key(json.loads(request.get_data() or b"{}"))
            elif path == "/_sim/events-rule" and request.method == "POST":
                body = events_rule(json.loads(request.get_data() or b"{}"))
            elif path == "/_sim/landing-zone" and request.method == "POST":
                body = landing_zone(json.loads(request.get_data() or b"{}"))
            elif path == "/_sim/copies":
                body = SIM.copies()
            elif path == "/_sim/invocations":
                body = SIM.snapshot_of_invocations()
            elif path == "/_sim/reset" and request.method == "POST":
                SIM.reset()
                PROTECTION.reset()
                TIMING.reset()
                body = {"ok": True}
            else:
                return Response("not found", status=404)(environ, start_response)
        except (ValueError, TypeError, KeyError) as err:
            return Response(json.dumps({"error": str(err)}), status=400)(environ, start_response)
        return Response(json.dumps(body), mimetype="application/json")(environ, start_response)
