"""Running the server beyond one process: Ray Serve (`chatbot deploy`, ray_serve.py).

Importing this package imports nothing from Ray; the `ray` extra provides it.
"""
