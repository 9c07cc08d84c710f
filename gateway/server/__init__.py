"""The HTTP server under the app: uvicorn's httptools protocol with the limits a public listener
needs, and the process's life (signals, drain, reload)."""
