"""Offline fakes of the chat platforms, served over real HTTP and websockets on 127.0.0.1."""
