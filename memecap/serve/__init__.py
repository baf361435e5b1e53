"""`memecap serve MODEL`: captions over HTTP from any export, run folder or baseline recipe.

    memecap serve runs/first --port 8000
    curl --data-binary @meme.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/caption

    settings.py   the server's limits and switches, checked before the model loads
    batching.py   requests that arrive together are captioned in one batch (dynamic batching)
    uploads.py    an uploaded body or an allowed local file -> a bounded RGB image, clear errors
    stats.py      counters and latencies, in Prometheus' text format at /metrics
    app.py        the routes (the page, /caption, /health, /metrics) on FastAPI
    server.py     loading the model and running uvicorn until SIGTERM or Ctrl-C
    page.html     the web page: drop a meme, see its caption, its text and the time
"""
from memecap.serve.settings import ServeSettings

__all__ = ["ServeSettings"]
