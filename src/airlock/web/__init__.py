"""The dashboard (``airlock dashboard``): server-rendered pages, a JSON API under ``/api/`` and
live updates over server-sent events, all on top of :mod:`airlock.api`.

Importing this package imports nothing heavy; :mod:`airlock.web.app` imports FastAPI and Jinja2,
:mod:`airlock.web.serve` uvicorn.
"""
