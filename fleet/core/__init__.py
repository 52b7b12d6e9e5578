"""Pieces shared by every app: the API base classes and error shape."""
