"""The server as an ASGI app: `uvicorn app:app`, or `python app.py` (settings' host and
port, default 127.0.0.1:8888). Configure with CHATBOT_* variables or a .env file."""

from chatbot.api import create_app

app = create_app()

if __name__ == "__main__":
    from chatbot.cli import run_server

    run_server(app)
