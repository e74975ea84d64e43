"""python -m gateway: the server (gateway/server/serve.py: uvicorn, JSON logs, the access check)."""

from gateway.server.serve import main

if __name__ == "__main__":
    main()
