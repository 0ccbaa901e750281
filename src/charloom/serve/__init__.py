"""``charloom serve``: an HTTP generation API and a web playground for a trained model.

Built on FastAPI and uvicorn (core dependencies). The pieces:

- ``limits.py``     ServeLimits: every bound a request must respect (one home for them);
- ``scheduler.py``  one worker that steps all requests' samples together, a chunk at a time;
- ``rounds.py``     which requests the worker takes in first and steps each round;
- ``stepping.py``   one chunk of steps with the engine ``charloom sample`` uses;
- ``jobs.py``       a request as the worker holds it (its stream, state and text);
- ``schemas.py``    request and response bodies (strict, bounded, documented in OpenAPI);
- ``auth.py``       API keys: reading them, checking ``Authorization: Bearer``, the 401;
- ``clients.py``    who a request is from, the fair share per client (429), the access log;
- ``app.py``        ``create_app(model, limits, keys)``: the routes, error answers, streaming;
- ``server.py``     ``serve(run, host, port, ...)``: load a run, bind, hand the app to uvicorn;
- ``static/``       the playground page and the offline API docs page.

Only ``limits`` is imported here, so ``import charloom.serve`` stays light, and an install that
lost FastAPI or uvicorn gets one line saying how to put them back.
"""

from __future__ import annotations

import importlib.util

from ..errors import CharloomError
from .limits import ServeLimits

EXTRA_HINT = "serving needs FastAPI and uvicorn: pip install 'fastapi>=0.110' 'uvicorn>=0.29'"


def require_serve_extra() -> None:
    """Raise a :class:`CharloomError` saying how to install FastAPI and uvicorn if either is
    missing."""
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise CharloomError(f"{EXTRA_HINT} ({', '.join(missing)} not installed)")


def serve(run, **kwargs) -> None:
    """Serve the model in run directory ``run``; see :func:`charloom.serve.server.serve`."""
    require_serve_extra()
    from .server import serve as _serve

    _serve(run, **kwargs)


__all__ = ["EXTRA_HINT", "ServeLimits", "require_serve_extra", "serve"]
