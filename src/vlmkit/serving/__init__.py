"""`vlmkit serve`: an OpenAI-compatible HTTP server (FastAPI, the [serve] extra) over a
continuous-batching scheduler, with Prometheus metrics and a static web page.

    from vlmkit.serving.app import ServeConfig, create_app
    app = create_app(vlmkit.load(), ServeConfig(max_batch=16))   # run with uvicorn
"""
