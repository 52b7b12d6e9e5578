"""The fleet server: Django project package and fleet domain apps."""
