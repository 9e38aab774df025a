"""On the path of the `mlserver-before` benchmark server only: MLServer's REST path as it was
before issue 19, when httptools was no dependency and uvicorn's `http="auto"` fell back to
h11 (uvicorn/protocols/http/auto.py imports httptools and takes h11 on ImportError)."""
raise ImportError("bench: the REST path before issue 19 ran on uvicorn's h11")
